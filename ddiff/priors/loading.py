"""Loading diffusion priors: the embedded default, guided-diffusion ``.pt`` files, safetensors.

Room: ``ddiff`` — pure torch + safetensors; imports nothing from storage, flows, prefect, zarr or
xarray.

Security: ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` only, so a
pickle that would run code is refused (:class:`UnsafeCheckpointError`) before anything executes.

Strictness: every key of the architecture must be present with the right shape and nothing else
may be in the file; otherwise :class:`CheckpointMismatchError` lists the missing, unexpected and
mis-shaped keys. The architecture comes from, in order: the ``preset`` argument (a preset name,
an :class:`~ddiff.priors.adm.ADMConfig` or a dict), the config stored in the safetensors metadata
or a sidecar ``<stem>.json`` (or ``config.json`` with a ``model`` entry next to the file), a preset whose key/shape list matches the file exactly, or a
config inferred from the shapes (norm groups and head width cannot be seen in shapes: 32 and 64,
guided-diffusion's values, are assumed — store a sidecar JSON for anything else).
"""
from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import torch

from ..schedule import VPSchedule
from .adm import PRESETS, ADMConfig, ADMPrior, ADMUNet

__all__ = [
    "load_prior", "load_state_dict_file", "infer_config", "check_state_dict",
    "CheckpointMismatchError", "UnsafeCheckpointError", "DEFAULT_WEIGHTS", "NAMED_WEIGHTS", "weights_path",
]

_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: the embedded priors, by the name ``load_prior`` accepts (see ``weights/MODEL_CARD.md``)
NAMED_WEIGHTS = {
    # v2 = v1 fine-tuned 2,668 more steps with a decaying lr: +0.25-0.27 dB Tweedie PSNR, +0.16 dB in DDiff
    # (paired, the cpu preset's five linear tasks), same network and cost -- the default since 2026-12-01
    "default": _WEIGHTS_DIR / "default_v2.safetensors",
    "default-v2": _WEIGHTS_DIR / "default_v2.safetensors",
    # v1 = the first embedded prior (5,013 steps); the numbers in docs marked "v1" were measured with it
    "default-v1": _WEIGHTS_DIR / "default_v1.safetensors",
    # v3 = v2 fine-tuned 2,800 more steps (stage 3): +0.10 dB Tweedie over v2, not yet measured inside
    # DDiff, so not the default; the next training stage starts from it (--init default-v3)
    "default-v3": _WEIGHTS_DIR / "default_v3.safetensors",
}
DEFAULT_WEIGHTS = NAMED_WEIGHTS["default"]
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
_META_KEY = "ddiff_config"


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys/shapes do not match the architecture (message lists them)."""

    def __init__(self, missing, unexpected, misshaped, arch: str):
        self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), list(misshaped)

        def block(title, items, fmt):
            if not items:
                return []
            lines = [f"  {title} ({len(items)}):"] + [f"    {fmt(i)}" for i in items[:20]]
            if len(items) > 20:
                lines.append(f"    ... and {len(items) - 20} more")
            return lines

        lines = [f"checkpoint does not match the {arch} architecture:"]
        lines += block("missing from the checkpoint", self.missing, str)
        lines += block("unexpected in the checkpoint", self.unexpected, str)
        lines += block("mis-shaped (checkpoint vs model)", self.misshaped,
                       lambda m: f"{m[0]}: {list(m[1])} vs {list(m[2])}")
        lines.append("  fix: pass the right preset=... (or a config dict), or a checkpoint for this architecture")
        super().__init__("\n".join(lines))


class UnsafeCheckpointError(ValueError):
    """The file holds pickled objects other than tensors/plain containers; it was not executed."""


def _resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch float dtype, got {dtype!r}")


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """A plain ``name -> tensor`` dict from what ``torch.load`` returned (also accepts the common
    wrappers ``{"state_dict": ...}``, ``{"model": ...}``, ``{"ema": ...}`` and a ``module.`` prefix)."""
    if isinstance(obj, dict) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("ema", "state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                return _unwrap(obj[key], path)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state_dict (a dict of name -> tensor), got {type(obj).__name__}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def load_state_dict_file(path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read ``(state_dict, config_or_None)`` from a ``.safetensors`` or ``.pt``/``.pth`` file on CPU.

    The config comes from the safetensors metadata (key ``ddiff_config``) or a sidecar
    ``<stem>.json``. Raises ``FileNotFoundError``, :class:`UnsafeCheckpointError` or ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} not found; give a path to a .pt/.pth/.safetensors file or 'default'"
        )
    suffix = path.suffix.lower()
    config = None
    if suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as exc:  # safetensors' SafetensorError: "header too large", ...
            raise ValueError(f"{path}: not a valid safetensors file ({exc}); the file is damaged, truncated or "
                             "another format — re-download or re-export it") from None
        if _META_KEY in meta:
            config = json.loads(meta[_META_KEY])
    elif suffix in (".pt", ".pth", ".ckpt", ".bin"):
        with open(path, "rb") as fh:
            head = fh.read(4)
        if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save zip, or a legacy pickle
            raise ValueError(f"{path}: not a PyTorch checkpoint (it starts with {head!r}, not a torch.save archive); "
                             "the file is damaged or another format")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeCheckpointError(
                f"{path}: refused to load — the file contains pickled objects that are not plain "
                "tensors (weights_only=True). Nothing from it was executed. If you trust its origin, "
                "convert it to safetensors in a sandbox first."
            ) from exc
        sd = _unwrap(obj, path)
    else:
        raise ValueError(f"{path}: unknown checkpoint format {suffix!r}; use .safetensors, .pt or .pth")
    # sidecars: <stem>.json, then the config.json of a training checkpoint directory
    for sidecar in (path.with_suffix(".json"), path.parent / "config.json"):
        if config is None and sidecar.is_file():
            config = json.loads(sidecar.read_text())
    if isinstance(config, dict) and "model" in config and isinstance(config["model"], dict):
        config = config["model"]
    return sd, config


def _shape_list(sd) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in sd.items()]


def _meta_net(config: ADMConfig) -> ADMUNet:
    with torch.device("meta"):
        return ADMUNet(config)


def infer_config(sd: dict[str, torch.Tensor]) -> ADMConfig:
    """The :class:`ADMConfig` whose parameters have exactly these names and shapes.

    Tries the named presets first (with the file's channel count), then reads the layout from
    the keys: model width and in/out channels from the first and last convs, levels and blocks
    per level from the number of input blocks and the widths of their first convs, attention
    from the ``.1.qkv`` entries. Raises ``ValueError`` when nothing fits.
    """
    try:
        w_in = sd["input_blocks.0.0.weight"]
        w_out = sd["out.2.weight"]
    except KeyError as exc:
        raise ValueError(
            f"cannot infer the architecture: key {exc.args[0]!r} missing — not a guided-diffusion UNet "
            "state_dict; pass preset=..."
        ) from None
    c_in, mc, c_out = int(w_in.shape[1]), int(w_in.shape[0]), int(w_out.shape[0])
    if c_out not in (c_in, 2 * c_in):
        raise ValueError(f"cannot infer the architecture: out channels {c_out} vs in channels {c_in}")
    target = _shape_list(sd)
    candidates = []
    for name, p in PRESETS.items():
        for groups in (p.get("norm_groups", 32), 32):
            try:
                candidates.append(ADMConfig(**{**p, "in_channels": c_in, "learn_sigma": c_out == 2 * c_in,
                                               "norm_groups": groups}))
            except ValueError:
                pass
    n_in = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"input_blocks\.(\d+)\.", k)))
    for levels in range(1, 9):
        for nrb in range(1, 5):
            if 1 + levels * nrb + (levels - 1) != n_in:
                continue
            mult, ds, attn, idx = [], 1, [], 1
            try:
                for level in range(levels):
                    for _ in range(nrb):
                        w = sd[f"input_blocks.{idx}.0.in_layers.2.weight"]
                        mult.append(int(w.shape[0]) // mc)
                        if f"input_blocks.{idx}.1.qkv.weight" in sd:
                            attn.append(ds)
                        idx += 1
                    idx += 1 if level != levels - 1 else 0
                    ds *= 2
            except KeyError:
                continue
            channel_mult = tuple(mult[::nrb])
            widths = {mc * m for m in channel_mult}
            groups = 32 if all(w % 32 == 0 for w in widths) else 16
            attn_widths = {mc * channel_mult[int(math.log2(d))] for d in attn} | {mc * channel_mult[-1]}
            heads = 64 if all(w % 64 == 0 for w in attn_widths) else 32
            try:
                candidates.append(ADMConfig(
                    in_channels=c_in, model_channels=mc, channel_mult=channel_mult, num_res_blocks=nrb,
                    attention_ds=tuple(sorted(set(attn))), num_head_channels=heads,
                    learn_sigma=c_out == 2 * c_in, norm_groups=groups,
                ))
            except ValueError:
                continue
    for cfg in candidates:
        if _shape_list(_meta_net(cfg).state_dict()) == target:
            return cfg
    raise ValueError(
        "cannot infer the architecture from the checkpoint's shapes (no preset or standard layout "
        f"matches its {len(sd)} tensors); pass preset=<name or config dict>"
    )


def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], arch: str = "ADMUNet") -> None:
    """Raise :class:`CheckpointMismatchError` unless ``sd`` has exactly ``model``'s keys and shapes."""
    ref = model.state_dict()
    missing = [k for k in ref if k not in sd]
    unexpected = [k for k in sd if k not in ref]
    misshaped = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in ref.items()
                 if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(missing, unexpected, misshaped, arch)


def _as_config(preset) -> ADMConfig:
    if isinstance(preset, ADMConfig):
        return preset
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; available: {sorted(PRESETS)}")
        return ADMConfig(**PRESETS[preset])
    if isinstance(preset, dict):
        return ADMConfig.from_dict(preset)
    raise ValueError(f"preset must be a name, an ADMConfig or a dict, got {type(preset).__name__}")


def weights_path(name_or_path) -> Path:
    """The file behind an embedded prior's name (:data:`NAMED_WEIGHTS`) or the path itself.
    Raises ``FileNotFoundError`` for a named prior whose file is missing."""
    if isinstance(name_or_path, str) and name_or_path in NAMED_WEIGHTS:
        path = NAMED_WEIGHTS[name_or_path]
        if not path.is_file():
            raise FileNotFoundError(
                f"the embedded prior {name_or_path!r} is missing ({path}); reinstall the package or pass a checkpoint path"
            )
        return path
    return Path(name_or_path)


def load_prior(name_or_path="default", preset=None, dtype="fp32", device="cpu",
               schedule: VPSchedule | None = None) -> ADMPrior:
    """Load a diffusion prior as an :class:`~ddiff.priors.adm.ADMPrior` (eval mode, frozen).

    ``name_or_path``: ``"default"`` (the embedded single-channel prior shipped in
    ``ddiff/priors/weights``) or a path to ``.safetensors`` / ``.pt`` / ``.pth``.
    ``preset``: a preset name (``"adm-ffhq256"``, ``"adm-imagenet256"``, ``"compact"``), an
    ``ADMConfig`` or a config dict; when omitted it is read from the file's metadata or a sidecar
    JSON (``<stem>.json`` or a training checkpoint's ``config.json``), else inferred from shapes. ``dtype``: ``"fp32"``, ``"bf16"``,
    ``"fp16"`` (or a torch dtype); ``device``: where the weights go. Loading is strict (see
    :class:`CheckpointMismatchError`); weights are bit-exact in fp32.
    """
    dt = _resolve_dtype(dtype)
    path = weights_path(name_or_path)
    name = name_or_path if isinstance(name_or_path, str) and name_or_path in NAMED_WEIGHTS else path.name
    sd, stored = load_state_dict_file(path)
    if preset is not None:
        config = _as_config(preset)
    elif stored is not None:
        config = ADMConfig.from_dict(stored)
    else:
        config = infer_config(sd)
    net = _meta_net(config)
    check_state_dict(net, sd, arch=f"ADMUNet({'preset ' + preset if isinstance(preset, str) else 'config'})")
    net.load_state_dict(sd, strict=True, assign=True)
    net = net.to(device=device, dtype=dt).eval().requires_grad_(False)
    if torch.device(device).type == "cpu":  # channels-last on CPU: faster oneDNN convolutions (benchmarks/network_cpu.py)
        net = net.to(memory_format=torch.channels_last)
        net.channels_last = True
    prior = ADMPrior(net, schedule=schedule, name=name)
    prior.config = config
    return prior.eval()
