"""The ADM (guided-diffusion) UNet, written from its published conventions, and its prior adapter.

Room: ``ddiff`` — pure torch; imports nothing from storage, flows, prefect, zarr or xarray.

:class:`ADMUNet` reproduces the parameter layout of OpenAI's ``guided_diffusion.unet.UNetModel``
(unconditional, 2-D, ``conv_resample=True``) so that the public checkpoints load key for key
(see ``tests/data/manifests/adm_*.json``). Conventions followed (the manifests' ``conventions``):

* timestep embedding: ``freq_i = exp(−ln(10000)·i/half)``, ``emb = [cos(t·freq), sin(t·freq)]``
  (cosine first), ``t`` the original DDPM index as float32 (fractional ``t`` allowed);
* ``time_embed = Linear(C→4C), SiLU, Linear(4C→4C)``;
* ResBlock with scale-shift norm ``h = GN(h)·(1 + scale) + shift`` (scale first in the chunk),
  resampling ResBlocks (2×2 average pool down, nearest ×2 up) applied to ``h`` after
  GroupNorm+SiLU and to the skip input;
* AttentionBlock with the *legacy* head-major QKV layout, ``heads = C / num_head_channels``,
  ``q, k`` each scaled by ``ch^(−1/4)``, softmax in float32;
* GroupNorm(32 groups, eps 1e-5) evaluated in float32 and cast back;
* decoder input is ``cat([h, skip])`` (current ``h`` first).

Shapes: ``forward(x, t)`` takes ``x`` of shape ``(B, C_in, H, W)`` (model space ``[−1, 1]``, ``H``
and ``W`` divisible by ``2**(len(channel_mult) − 1)``) and ``t`` of shape ``(B,)`` (or a scalar),
returns ``(B, C_out, H, W)``; with ``learn_sigma`` ``C_out = 2·C_in`` and channels ``0..C_in−1``
are ε̂ (the other half is the learned-range variance interpolation, unused by our solvers).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..schedule import VPSchedule
from .base import Prior, timestep_tensor

__all__ = ["ADMConfig", "ADMUNet", "ADMPrior", "PRESETS", "timestep_embedding"]


@dataclass
class ADMConfig:
    """Hyper-parameters of :class:`ADMUNet` (the names of guided-diffusion's ``UNetModel``).

    ``attention_ds`` lists *downsampling factors* at which attention is used (guided-diffusion's
    ``attention_resolutions`` after ``image_size // res``). ``num_head_channels = −1`` means "use
    ``num_heads`` heads" as in guided-diffusion; otherwise heads = channels / num_head_channels.
    ``norm_groups`` is 32 for the public checkpoints; compact priors may use fewer.
    """

    in_channels: int = 3
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 1
    attention_ds: tuple[int, ...] = (16,)
    num_heads: int = 4
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    learn_sigma: bool = True
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    dropout: float = 0.0
    norm_groups: int = 32
    image_size: int | None = None  # informative only (the native training resolution)

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_ds = tuple(int(d) for d in self.attention_ds)
        if self.in_channels < 1 or self.model_channels < 1:
            raise ValueError("ADMConfig: in_channels and model_channels must be >= 1")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"ADMConfig: channel_mult must be positive integers, got {self.channel_mult}")
        if self.num_res_blocks < 1:
            raise ValueError(f"ADMConfig: num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if not self.use_scale_shift_norm or not self.resblock_updown:
            raise ValueError(
                "ADMConfig: only use_scale_shift_norm=True and resblock_updown=True are implemented "
                "(the layout of the public ADM checkpoints)"
            )
        for m in set(self.channel_mult):
            ch = m * self.model_channels
            if ch % self.norm_groups:
                raise ValueError(
                    f"ADMConfig: width {ch} (model_channels x {m}) is not divisible by "
                    f"norm_groups={self.norm_groups}; pick widths that are multiples of it"
                )

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def downsampling(self) -> int:
        """Total downsampling factor: input tiles must be divisible by it."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_ds"] = list(self.attention_ds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ADMConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"ADMConfig: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


#: Architectures of the public checkpoints (manifests ``resolved_UNetModel_kwargs``) and the
#: compact configuration used for domain priors and the embedded default prior.
PRESETS: dict[str, dict] = {
    "adm-ffhq256": dict(
        in_channels=3, model_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=1,
        attention_ds=(16,), num_heads=4, num_head_channels=64, learn_sigma=True, image_size=256,
    ),
    "adm-imagenet256": dict(
        in_channels=3, model_channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
        attention_ds=(8, 16, 32), num_heads=4, num_head_channels=64, learn_sigma=True,
        image_size=256,
    ),
    # compact domain prior (the embedded default prior's network): ~1.9 M parameters at one
    # channel, widths 32-64, attention only at 1/8 resolution, tiles divisible by 8
    "compact": dict(
        in_channels=1, model_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
        attention_ds=(8,), num_heads=4, num_head_channels=32, learn_sigma=False,
        norm_groups=16, image_size=64,
    ),
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(B,) → (B, dim)``: cosine half first, then sine (ADM convention)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 and cast back to the input dtype (ADM's ``GroupNorm32``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """ADM ResBlock (scale-shift norm). ``(B, ch, H, W), (B, E) → (B, out, H', W')``."""

    def __init__(self, ch: int, emb_ch: int, out_ch: int, groups: int, dropout: float = 0.0,
                 up: bool = False, down: bool = False):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(groups, ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.up, self.down = up, down
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch))
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, out_ch), nn.SiLU(), nn.Dropout(dropout),
            _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # without autograd the activations are applied in place (one buffer less per layer; with
        # autograd -- training, DPS -- out-of-place, as autograd needs the inputs of SiLU)
        inplace = not torch.is_grad_enabled()
        h = F.silu(self.in_layers[0](x), inplace=inplace)  # SiLU(GN(x))
        if self.up or self.down:  # resampling after GroupNorm+SiLU, on h and on the skip input
            h, x = self._resample(h), self._resample(x)
        h = self.in_layers[2](h)
        scale, shift = self.emb_layers(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, self.out_layers[0](h), 1 + scale)  # GN(h)·(1 + scale) + shift, one pass
        h = self.out_layers[3](self.out_layers[2](F.silu(h, inplace=inplace)))
        return h.add_(self.skip_connection(x)) if inplace else self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """ADM self-attention with the legacy head-major QKV layout. ``(B, C, H, W) → same``."""

    def __init__(self, ch: int, num_heads: int, num_head_channels: int, groups: int):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if ch % num_head_channels:
                raise ValueError(f"attention width {ch} not divisible by num_head_channels={num_head_channels}")
            self.num_heads = ch // num_head_channels
        self.norm = GroupNorm32(groups, ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = _zero(nn.Conv1d(ch, ch, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, *spatial = x.shape
        cl = x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        bs, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        # legacy order: per head [q_h | k_h | v_h], not all-q / all-k / all-v
        q, k, v = qkv.reshape(bs * self.num_heads, ch * 3, length).transpose(1, 2).split(ch, dim=2)
        # softmax(q·k / √ch) v -- ADM scales q and k by ch^(-1/4) each, the same product; the fused
        # kernel accumulates in float32 for half inputs (ADM's softmax in float32)
        a = F.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(ch))  # (B·heads, T, ch)
        out = (x + self.proj_out(a.transpose(1, 2).reshape(bs, -1, length))).reshape(b, c, *spatial)
        return out.contiguous(memory_format=torch.channels_last) if cl else out  # keep the caller's layout


class EmbedSequential(nn.Sequential):
    """Sequential whose ResBlocks also receive the timestep embedding (ADM's TimestepEmbedSequential)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
        return x


class ADMUNet(nn.Module):
    """The guided-diffusion UNet (unconditional). See the module docstring for conventions.

    Build with ``ADMUNet(ADMConfig(...))``, ``ADMUNet(**kwargs)`` or
    ``ADMUNet.from_preset("adm-ffhq256" | "adm-imagenet256" | "compact", **overrides)``.
    """

    def __init__(self, config: ADMConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = ADMConfig(**kwargs)
        elif kwargs:
            raise ValueError("pass either an ADMConfig or keyword arguments, not both")
        self.config = cfg = config
        #: run the activations in channels-last memory order (see benchmarks/network_cpu.py for when it pays)
        self.channels_last = False
        mc, g = cfg.model_channels, cfg.norm_groups
        emb_ch = 4 * mc
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        ch = input_ch = cfg.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_ch, mult * mc, g, cfg.dropout)]
                ch = mult * mc
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, cfg.num_heads, cfg.num_head_channels, g))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(ResBlock(ch, emb_ch, ch, g, cfg.dropout, down=True)))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(
            ResBlock(ch, emb_ch, ch, g, cfg.dropout),
            AttentionBlock(ch, cfg.num_heads, cfg.num_head_channels, g),
            ResBlock(ch, emb_ch, ch, g, cfg.dropout),
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                ich = skip_chans.pop()
                layers = [ResBlock(ch + ich, emb_ch, mc * mult, g, cfg.dropout)]
                ch = mc * mult
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, heads_up, cfg.num_head_channels, g))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, emb_ch, ch, g, cfg.dropout, up=True))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(g, ch), nn.SiLU(), _zero(nn.Conv2d(input_ch, cfg.out_channels, 3, padding=1))
        )

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ADMUNet":
        """Build a named architecture; keyword ``overrides`` replace preset values (e.g.
        ``in_channels=1`` for the compact preset)."""
        if name not in PRESETS:
            raise ValueError(f"unknown ADM preset {name!r}; available: {sorted(PRESETS)}")
        return cls(ADMConfig(**{**PRESETS[name], **overrides}))

    @classmethod
    def from_config(cls, d: dict) -> "ADMUNet":
        return cls(ADMConfig.from_dict(d))

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def downsampling(self) -> int:
        return self.config.downsampling

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, timesteps) -> torch.Tensor:
        """``x``: ``(B, C_in, H, W)``; ``timesteps``: original DDPM indices, scalar or ``(B,)``
        (ints or floats). Returns ``(B, C_out, H, W)`` in ``x``'s dtype."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"ADMUNet expects (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        f = self.downsampling
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"ADMUNet: H and W must be divisible by {f} (2^(levels-1)), got {tuple(x.shape[-2:])}; "
                "pad or crop the tile"
            )
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"timesteps must be a scalar or shape ({x.shape[0]},), got {tuple(t.shape)}")
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(dtype))
        h = x.to(dtype)
        if self.channels_last:  # activations in (B, H, W, C) memory order: oneDNN's convolutions skip a reorder
            h = h.contiguous(memory_format=torch.channels_last)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).to(x.dtype).contiguous()


class ADMPrior(Prior):
    """Adapter: an :class:`ADMUNet` as a :class:`~ddiff.priors.base.Prior`.

    ``eps(x_t, t)`` returns the first ``C`` of the network's output channels (ε̂; the learned
    variance half is dropped). ``t`` is the original DDPM index (int, float or ``(B,)`` tensor;
    fractional values allowed).
    """

    def __init__(self, net: ADMUNet, schedule: VPSchedule | None = None, name: str = "adm"):
        super().__init__(schedule)
        self.net = net
        self.channels = net.in_channels
        self.name = name

    @property
    def downsampling(self) -> int:
        return self.net.downsampling

    def eps(self, x_t: torch.Tensor, t) -> torch.Tensor:
        self.check_input(x_t)
        tt = timestep_tensor(t, x_t.shape[0], x_t.device).to(torch.float32)
        out = self.net(x_t, tt)
        return out[:, : self.channels]

    def eps_and_v(self, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(ε̂, v)`` from one network call; ``v`` is the learned-range variance interpolation
        (channels ``C…2C−1``, nominally in ``[−1, 1]``) or ``None`` without ``learn_sigma``.
        DPS uses it for its learned-range ancestral variance."""
        self.check_input(x_t)
        tt = timestep_tensor(t, x_t.shape[0], x_t.device).to(torch.float32)
        out = self.net(x_t, tt)
        c = self.channels
        return out[:, :c], (out[:, c : 2 * c] if out.shape[1] >= 2 * c else None)

    def forward(self, x_t: torch.Tensor, t) -> torch.Tensor:
        return self.eps(x_t, t)
