"""Nonlinear (bkse) blur: a KernelWizard network whose state dict loads ``GOPRO_wVAE.pth`` as is.

Room: ``operators`` — torch and numpy.

An independent implementation of the architecture described in ``baselines_spec.md`` §7 and
``tests/data/manifests/bkse_kernelwizard_gopro.json``: module names, parameter shapes and registration
order reproduce the reference state dict key for key (159 tensors, 115,265,475 parameters), so
the published checkpoint strict-loads. Only ``adapt_kernel`` (the paper's ``G``) is used by the
forward model; the encoder ``kernel_extractor`` (``F``) exists so that strict loading works and is
runnable through :meth:`KernelWizard.encode`.

Weights: ``GOPRO_wVAE.pth`` is not shipped (it is on the bkse authors' Google Drive, see the bkse
README). Pass its path as ``weights=`` or set ``DDIFF_BKSE_WEIGHTS``. It is read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import ForwardModel, check_image, register

__all__ = ["KernelWizard", "NonlinearBlur", "MissingWeightsError", "state_dict_keys_sha256", "WEIGHTS_ENV"]

WEIGHTS_ENV = "DDIFF_BKSE_WEIGHTS"


class MissingWeightsError(FileNotFoundError):
    """The bkse checkpoint is not where the operator was told to look."""


def state_dict_keys_sha256(state_dict) -> str:
    """The manifest's ``keys_sha256``: sha256 of ``name:d0,d1,…`` lines joined by ``\\n`` in order."""
    lines = [f"{k}:{','.join(str(int(d)) for d in v.shape)}" for k, v in state_dict.items()]
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


class _ResBlock(nn.Module):
    """``x + conv2(relu(conv1(x)))``, 3×3 convs with bias, zero padding (bkse ``ResidualBlock_noBN``)."""

    def __init__(self, nf: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class _ReflectResBlock(nn.Module):
    """``x + conv(relu(conv(pad(x))))`` with reflect padding, no bias, no norm (pix2pix ``ResnetBlock``).

    ``conv_block`` keeps the reference's Sequential layout (pads and identity norms occupy indices
    0, 2, 3, 4, 6) so the two convolutions sit at indices 1 and 5.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.Identity(), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.Identity(),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class _UNetLevel(nn.Module):
    """One level of the adapter U-Net (pix2pix skip block, norm ``none``, 4×4 stride-2 convs).

    ``down``/``up`` are Sequentials laid out like the reference (activation at index 0, conv at 1,
    except the outermost ``down`` whose conv is at 0). Inner levels return
    ``cat([up(…), skip])`` where ``skip`` is the level input **after** the LeakyReLU(0.2): the
    reference applies that activation in place, so its skip connection carries the activated
    tensor. The innermost level concatenates the kernel latent after its down conv.
    """

    def __init__(self, outer_nc: int, inner_nc: int, sub: "_UNetLevel | None" = None,
                 outermost: bool = False, innermost: bool = False):
        super().__init__()
        self.outermost, self.innermost = outermost, innermost
        if outermost:
            self.down = nn.Sequential(nn.Conv2d(outer_nc, inner_nc, 4, 2, 1, bias=False))
        else:
            self.down = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(outer_nc, inner_nc, 4, 2, 1, bias=False))
        if sub is not None:
            self.submodule = sub
        if outermost:
            self.up = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1, bias=True), nn.Tanh())
        else:
            self.up = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1, bias=False))

    def forward(self, x, latent):
        if self.outermost:
            return self.up(self.submodule(self.down(x), latent))
        skip = self.down[0](x)
        h = self.down[1](skip)
        h = torch.cat([h, latent], dim=1) if self.innermost else self.submodule(h, latent)
        return torch.cat([self.up(h), skip], dim=1)


class _Adapter(nn.Module):
    """The kernel adapter ``G``'s U-Net: 5 levels, channels 64→64→128→256→512→512 (H/4 → H/128)."""

    def __init__(self, nf: int = 64):
        super().__init__()
        level = _UNetLevel(nf * 8, nf * 8, innermost=True)
        level = _UNetLevel(nf * 4, nf * 8, level)
        level = _UNetLevel(nf * 2, nf * 4, level)
        level = _UNetLevel(nf, nf * 2, level)
        self.model = _UNetLevel(nf, nf, level, outermost=True)

    def forward(self, x, latent):
        return self.model(x, latent)


class _Encoder(nn.Module):
    """The kernel extractor ``F`` (not used by the forward model; present for strict loading).

    ReflectionPad(3), conv7×7 (2nf→nf), ReLU, 5 × [conv3×3 stride 2, ReLU] up to 1024 channels,
    4 reflect residual blocks; no biases (norm ``none``). Identity norms keep the reference indices.
    """

    def __init__(self, nf: int = 64, kernel_dim: int = 512, n_blocks: int = 4):
        super().__init__()
        out_nc = 2 * kernel_dim  # use_vae: mean and std
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(2 * nf, nf, 7, bias=False), nn.Identity(), nn.ReLU()]
        for i in range(5):
            cin, cout = min(nf * 2**i, out_nc), min(nf * 2 ** (i + 1), out_nc)
            layers += [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.Identity(), nn.ReLU()]
        layers += [_ReflectResBlock(out_nc) for _ in range(n_blocks)]
        self.model = nn.Sequential(*layers)

    def forward(self, feat_sharp, feat_blur):
        return self.model(torch.cat([feat_sharp, feat_blur], dim=1))


class KernelWizard(nn.Module):
    """bkse KernelWizard (``options/generate_blur/default.yml``): nf 64, 10 front / 20 back blocks, k-dim 512.

    :meth:`adapt_kernel` ``(x, k)`` → blurred image: ``x`` ``(N, 3, H, W)`` in ``[0, 1]`` with
    ``H, W`` divisible by 128, ``k`` ``(N, 512, H/128, W/128)``; output ``(N, 3, H, W)``, roughly
    ``[0, 1]``, not clamped (``= recon_trunk(adapter(features(x), k)) + x``).
    """

    def __init__(self, input_nc: int = 3, nf: int = 64, front_blocks: int = 10, back_blocks: int = 20,
                 kernel_dim: int = 512, encoder_blocks: int = 4):
        super().__init__()
        self.kernel_dim = kernel_dim
        lrelu = nn.LeakyReLU(0.1)
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(input_nc, nf, 3, 1, 1), lrelu, nn.Conv2d(nf, nf, 3, 2, 1), lrelu, nn.Conv2d(nf, nf, 3, 2, 1), lrelu,
            *[_ResBlock(nf) for _ in range(front_blocks)],
        )
        self.kernel_extractor = _Encoder(nf, kernel_dim, encoder_blocks)
        self.adapter = _Adapter(nf)
        self.recon_trunk = nn.Sequential(
            *[_ResBlock(nf) for _ in range(back_blocks)],
            nn.Conv2d(nf, nf * 4, 3, 1, 1), nn.PixelShuffle(2), lrelu,
            nn.Conv2d(nf, 64 * 4, 3, 1, 1), nn.PixelShuffle(2), lrelu,
            nn.Conv2d(64, 64, 3, 1, 1), lrelu,
            nn.Conv2d(64, input_nc, 3, 1, 1),
        )

    def adapt_kernel(self, x_sharp: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        feat = self.feature_extractor(x_sharp)
        return self.recon_trunk(self.adapter(feat, kernel)) + x_sharp

    adaptKernel = adapt_kernel  # the reference's name

    def encode(self, x_sharp: torch.Tensor, x_blur: torch.Tensor):
        """The encoder ``F``: (mean, std) of the kernel latent, each ``(N, 512, H/128, W/128)``.

        Its reflect-padded residual blocks need ``H, W ≥ 256`` (as in the reference).
        """
        out = self.kernel_extractor(self.feature_extractor(x_sharp), self.feature_extractor(x_blur))
        return out[:, : self.kernel_dim], out[:, self.kernel_dim :]

    def forward(self, x_sharp: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return self.adapt_kernel(x_sharp, kernel)

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu") -> "KernelWizard":
        """Build and strict-load ``GOPRO_wVAE.pth`` (``torch.load(weights_only=True)``)."""
        state = torch.load(Path(path), map_location=map_location, weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
        model = cls()
        model.load_state_dict(state, strict=True)
        return model


def _resolve_weights(weights) -> Path:
    path = weights if weights is not None else os.environ.get(WEIGHTS_ENV)
    hint = (
        "nonlinear_blur needs the bkse checkpoint GOPRO_wVAE.pth (~460 MB; Google Drive file id "
        "1vRoDpIsrTRYZKsOMPNbPcMtFDpCT6Foy, linked from the bkse README). Download it yourself and pass "
        f"get_operator('nonlinear_blur', weights='/path/to/GOPRO_wVAE.pth') or set {WEIGHTS_ENV}=/path/to/GOPRO_wVAE.pth"
    )
    if path is None:
        raise MissingWeightsError(f"no weights given. {hint}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingWeightsError(f"weights file {str(p)!r} does not exist. {hint}")
    return p


@register("nonlinear_blur")
class NonlinearBlur(ForwardModel):
    """Nonlinear blur (``baselines_spec.md`` §2.6): ``A(x) = clamp(2·G((x+1)/2, k) − 1, −1, 1)``.

    ``G`` = ``KernelWizard.adapt_kernel`` with pretrained weights (``weights=`` path or the
    ``DDIFF_BKSE_WEIGHTS`` variable; :class:`MissingWeightsError` otherwise), or a ready ``model``.
    The latent ``k = latent_scale · RandomState(seed).randn(1, 512, H/128, W/128)`` (float32) is drawn
    **once per operator** (DAPS's fix of DPS's per-call redraw; seed 0 reproduces DAPS's kernel:
    2.11686, 0.48019, 1.17449, 2.68907, … sum −36.926) — at construction when ``image_size`` is
    given, else on the first call — and shared by every image in the batch.

    ``x``: ``(B, 3, H, W)`` in ``[−1, 1]``, ``H, W`` multiples of 128. Output: same shape in
    ``[−1, 1]``. Nonlinear; ``halo = None`` (the U-Net reaches down to H/128). The network's
    parameters are frozen; gradients flow to ``x`` only.
    """

    linear = False
    halo = None

    def __init__(self, weights=None, seed: int = 0, latent_scale: float = 1.2, image_size=None,
                 model: KernelWizard | None = None):
        super().__init__()
        self.model = model if model is not None else KernelWizard.from_checkpoint(_resolve_weights(weights))
        self.model.eval().requires_grad_(False)
        self.seed, self.latent_scale = int(seed), float(latent_scale)
        self.register_buffer("latent", None)
        if image_size is not None:
            h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            self._draw(int(h), int(w))

    def _draw(self, h: int, w: int) -> None:
        if h % 128 or w % 128:
            raise ValueError(f"nonlinear_blur: image height and width must be multiples of 128, got {h}x{w}")
        z = np.random.RandomState(self.seed).randn(1, self.model.kernel_dim, h // 128, w // 128)
        self.latent = torch.as_tensor((self.latent_scale * z).astype(np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, "nonlinear_blur")
        b, c, h, w = x.shape
        if c != 3:
            raise ValueError(f"nonlinear_blur: the bkse network takes RGB images (3 channels), got {c}")
        if h % 128 or w % 128:
            raise ValueError(f"nonlinear_blur: image height and width must be multiples of 128, got {h}x{w}")
        if self.latent is None:
            self._draw(h, w)
        if tuple(self.latent.shape[-2:]) != (h // 128, w // 128):
            raise ValueError(f"nonlinear_blur: latent drawn for {tuple(self.latent.shape[-2:])}×128 images, got {h}x{w}")
        k = self.latent.to(device=x.device, dtype=x.dtype).expand(b, -1, -1, -1)
        blurred = self.model.adapt_kernel((x + 1) / 2, k)
        return torch.clamp(2 * blurred - 1, -1, 1)

    def extra_repr(self) -> str:
        return f"seed={self.seed}, latent_scale={self.latent_scale}, halo=None"
