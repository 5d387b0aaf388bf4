"""ε-prediction training of diffusion priors, with checkpoints that resume exactly.

Room: ``ddiff`` — pure torch, numpy, safetensors; imports nothing from storage, flows, prefect,
zarr or xarray (``flows.train_prior`` feeds it crops read from Zarr).

Objective (DDPM, Ho et al. 2020, the "simple" loss): for clean ``x_0`` in model space ``[−1, 1]``,
``t ~ U{0, …, T−1}``, ``ε ~ N(0, I)``, ``x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε``, minimise
``E ||ε̂_θ(x_t, t) − ε||²`` (mean over pixels). Only the ε half of a ``learn_sigma`` network is
trained (the variance half receives no gradient).

Data: a *sampler* ``sample(generator, batch) -> (B, C, h, w)`` tensor in ``[−1, 1]`` that draws
everything random from the generator it is given (see :class:`CropSampler`); the trainer then
applies random flips and 90° rotations. Because every random draw comes from one
``torch.Generator`` whose state is checkpointed, training ``n`` steps and resuming for ``m`` more
reproduces ``n + m`` uninterrupted steps bit for bit on CPU.

Checkpoint layout (``out_dir/ckpt-<step>/``): ``model.safetensors`` (raw weights),
``ema.safetensors`` (EMA weights — the ones to ship), ``config.json`` (network + training config,
step, wall time, loss), ``state.pt`` (optimizer state, EMA-free RNG state, step — tensors and
plain containers only, loaded with ``torch.load(weights_only=True)``). ``out_dir/latest.json``
names the newest complete checkpoint and is written last (atomically), so a crash mid-write never
leaves a half checkpoint behind as "latest". ``out_dir/loss.jsonl`` logs one JSON line per
``log_every`` steps.

Staged training: ``train(..., init_from=path)`` starts a fresh run (new optimizer, step 0) from
the weights of an existing safetensors/``.pt`` file — e.g. the shipped prior's EMA — so a second
stage can continue a finished one with its own learning-rate schedule (:func:`lr_at`: constant,
or cosine/linear decay to ``lr_min`` over the stage's ``steps``, after an optional linear warm-up).
The schedule is a pure function of the step and of the config recorded in every checkpoint, so
resuming a stage stays bit-exact; the init file's path and sha256 are recorded there too.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .priors.adm import ADMUNet
from .schedule import VPSchedule

__all__ = ["TrainConfig", "CropSampler", "augment_dihedral", "train", "latest_checkpoint", "load_ema", "lr_at"]

Sampler = Callable[[torch.Generator, int], torch.Tensor]


@dataclass
class TrainConfig:
    """Training hyper-parameters. ``ema_decay`` is the target decay; early steps use the warm-up
    ``min(ema_decay, (1 + step) / (10 + step))`` so short runs still get a useful average.

    ``low_t_fraction``: share of each batch whose timestep is drawn from ``U{0, …, low_t_max−1}``
    instead of ``U{0, …, T−1}`` — a loss re-weighting towards low noise (the optimum ε̂ at each
    ``t`` is unchanged; only capacity/effort moves), useful for short CPU runs whose prior must
    denoise well at small σ."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    checkpoint_every: int = 500
    log_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    augment: bool = True
    low_t_fraction: float = 0.0
    low_t_max: int = 250
    lr_schedule: str = "constant"
    lr_min: float = 0.0
    warmup_steps: int = 0
    ema_warmup: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError(
                "TrainConfig: need steps >= 0, batch_size >= 1, checkpoint_every >= 1, log_every >= 1"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig: ema_decay must be in [0, 1), got {self.ema_decay}")
        self.betas = tuple(float(b) for b in self.betas)
        if not 0.0 <= self.low_t_fraction <= 1.0 or self.low_t_max < 1:
            raise ValueError("TrainConfig: need 0 <= low_t_fraction <= 1 and low_t_max >= 1")
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"TrainConfig: lr_schedule must be constant, cosine or linear, got {self.lr_schedule!r}")
        if not 0.0 <= self.lr_min <= self.lr or self.warmup_steps < 0:
            raise ValueError("TrainConfig: need 0 <= lr_min <= lr and warmup_steps >= 0")


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate of optimisation step ``step`` (0-based: the step that moves the weights from
    ``step`` to ``step + 1`` done steps). Warm-up ``lr·(step+1)/warmup_steps`` for the first
    ``warmup_steps`` steps, then constant ``lr`` or a decay that reaches ``lr_min`` at the last
    step (``steps − 1``): cosine ``lr_min + (lr − lr_min)·(1 + cos πp)/2`` or linear, with
    ``p`` the fraction of the post-warm-up steps already done."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    span = config.steps - 1 - config.warmup_steps
    p = 1.0 if span <= 0 else min(1.0, (step - config.warmup_steps) / span)
    shape = 0.5 * (1 + math.cos(math.pi * p)) if config.lr_schedule == "cosine" else 1 - p
    return config.lr_min + (config.lr - config.lr_min) * shape


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CropSampler:
    """Random ``crop × crop`` patches from a list of images.

    ``images``: arrays/tensors of shape ``(C, H, W)`` (or ``(H, W)`` for one channel) already in
    ``[−1, 1]``, each at least ``crop`` pixels in both directions. ``weighting="area"`` picks an
    image with probability proportional to its number of crop positions (uniform over all
    crops); ``"image"`` picks every image equally often (so one huge image cannot dominate).
    """

    def __init__(self, images: Sequence, crop: int, weighting: str = "area"):
        if weighting not in ("area", "image"):
            raise ValueError(f"CropSampler: weighting must be 'area' or 'image', got {weighting!r}")
        if not images:
            raise ValueError("CropSampler: no images given")
        ims = []
        for i, im in enumerate(images):
            t = torch.as_tensor(np.asarray(im), dtype=torch.float32)
            if t.ndim == 2:
                t = t[None]
            if t.ndim != 3:
                raise ValueError(f"CropSampler: image {i} must be (C,H,W) or (H,W), got {tuple(t.shape)}")
            if t.shape[-1] < crop or t.shape[-2] < crop:
                raise ValueError(f"CropSampler: image {i} of shape {tuple(t.shape)} is smaller than crop {crop}")
            ims.append(t.contiguous())
        if len({t.shape[0] for t in ims}) != 1:
            raise ValueError("CropSampler: all images must have the same channel count")
        self.images, self.crop = ims, int(crop)
        counts = torch.tensor([(t.shape[-2] - crop + 1) * (t.shape[-1] - crop + 1) for t in ims], dtype=torch.float64)
        if weighting == "image":
            counts = torch.ones_like(counts)
        self.weights = counts / counts.sum()

    @property
    def channels(self) -> int:
        return self.images[0].shape[0]

    def __call__(self, generator: torch.Generator, batch: int) -> torch.Tensor:
        idx = torch.multinomial(self.weights, batch, replacement=True, generator=generator)
        out = torch.empty(batch, self.channels, self.crop, self.crop)
        for b, i in enumerate(idx.tolist()):
            im = self.images[i]
            top = int(torch.randint(0, im.shape[-2] - self.crop + 1, (1,), generator=generator))
            left = int(torch.randint(0, im.shape[-1] - self.crop + 1, (1,), generator=generator))
            out[b] = im[:, top : top + self.crop, left : left + self.crop]
        return out


def augment_dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random horizontal flip and rotation by a multiple of 90° (the 8 dihedral
    symmetries of a square). ``x``: ``(B, C, h, h)``."""
    flips = torch.randint(0, 2, (x.shape[0],), generator=generator).tolist()
    rots = torch.randint(0, 4, (x.shape[0],), generator=generator).tolist()
    out = []
    for xi, f, r in zip(x, flips, rots):
        if f:
            xi = xi.flip(-1)
        out.append(torch.rot90(xi, r, dims=(-2, -1)))
    return torch.stack(out)


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def latest_checkpoint(out_dir) -> Path | None:
    """The newest complete checkpoint directory in ``out_dir`` (or ``None``)."""
    p = Path(out_dir) / "latest.json"
    if not p.exists():
        return None
    ck = Path(out_dir) / json.loads(p.read_text())["checkpoint"]
    return ck if ck.exists() else None


def load_ema(checkpoint_dir, device="cpu") -> tuple[ADMUNet, dict]:
    """Build the network of a checkpoint with its EMA weights. Returns ``(net, config_json)``."""
    ck = Path(checkpoint_dir)
    meta = json.loads((ck / "config.json").read_text())
    net = ADMUNet.from_config(meta["model"])
    net.load_state_dict(load_file(str(ck / "ema.safetensors"), device=str(device)), strict=True)
    return net.to(device), meta


def _save_checkpoint(out_dir: Path, step: int, model: nn.Module, ema: dict, opt, gen, cfg: TrainConfig,
                     extra: dict, keep: int) -> Path:
    ck = out_dir / f"ckpt-{step:08d}"
    tmp = out_dir / f".tmp-ckpt-{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    # the network config rides in the safetensors metadata so load_prior needs no guessing
    st_meta = {"ddiff_config": json.dumps(model.config.to_dict())}
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(tmp / "model.safetensors"), metadata=st_meta)
    save_file({k: v.contiguous().cpu() for k, v in ema.items()}, str(tmp / "ema.safetensors"), metadata=st_meta)
    torch.save({"step": step, "optimizer": opt.state_dict(), "rng": gen.get_state()}, tmp / "state.pt")
    meta = {"step": step, "model": model.config.to_dict(), "train": asdict(cfg), **extra}
    (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    if ck.exists():
        shutil.rmtree(ck)
    os.replace(tmp, ck)
    _atomic_json(out_dir / "latest.json", {"checkpoint": ck.name, "step": step})
    old = sorted(p for p in out_dir.glob("ckpt-*") if p.is_dir() and p != ck)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return ck


def _truncate_log(path: Path, step: int) -> None:
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(ln + "\n" for ln in keep))
    os.replace(tmp, path)


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional; the loss log still records progress
        return None
    return tqdm(total=total, initial=initial, unit="step", mininterval=5.0)


def train(model: ADMUNet, sample: Sampler, config: TrainConfig, out_dir, *, resume: bool = True,
          device=None, schedule: VPSchedule | None = None, progress: bool = True,
          max_wall_s: float | None = None, init_from=None) -> dict:
    """Train ``model`` (in place) for ``config.steps`` total steps; returns a summary dict.

    ``sample(generator, batch)`` yields clean crops ``(B, C, h, w)`` in ``[−1, 1]``. With
    ``resume=True`` and a checkpoint in ``out_dir``, model, EMA, optimizer, RNG and step are
    restored and training continues up to ``config.steps`` (the same total). bf16 autocast is
    used on CUDA only; CPU runs are fp32 and deterministic. ``max_wall_s`` stops this call early
    (after a checkpoint) once that many seconds have passed; a later call resumes from there.

    ``init_from``: a ``.safetensors``/``.pt`` weight file (loaded without pickle, keys and shapes
    must match ``model`` exactly) whose weights start a NEW run — model and EMA both begin there,
    the optimizer is fresh. Ignored when a checkpoint is resumed (it already holds the weights);
    its path and sha256 are recorded in every checkpoint's ``config.json`` as ``init``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    schedule = schedule or VPSchedule()
    sqrt_ab = torch.sqrt(schedule.alpha_bar).float().to(device)
    sqrt_1mab = torch.sqrt(1 - schedule.alpha_bar).float().to(device)
    C = model.in_channels
    model.to(device).train()
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    init = None
    if init_from is not None:
        from .priors.loading import check_state_dict, load_state_dict_file

        init_path = Path(init_from).resolve()
        sd, _ = load_state_dict_file(init_path)
        check_state_dict(model, sd)
        init = {"path": str(init_path), "sha256": _sha256(init_path)}
    step, wall_before = 0, 0.0

    ck = latest_checkpoint(out_dir) if resume else None
    if ck is not None:
        meta = json.loads((ck / "config.json").read_text())
        if meta["model"] != model.config.to_dict():
            raise ValueError(
                f"resume: checkpoint {ck} was trained with a different network config; "
                "use a fresh out_dir or the same config"
            )
        model.load_state_dict(load_file(str(ck / "model.safetensors"), device=str(device)), strict=True)
        ema = {k: v.float() for k, v in load_file(str(ck / "ema.safetensors"), device=str(device)).items()}
        state = torch.load(ck / "state.pt", weights_only=True, map_location=device)
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"].cpu())
        step = int(state["step"])
        wall_before = float(meta.get("wall_time_s", 0.0))
        init = meta.get("init")
        _truncate_log(out_dir / "loss.jsonl", step)  # drop entries logged after that checkpoint
    else:
        if init is not None:  # a new stage: weights (and so the EMA) start from the init file
            model.load_state_dict(sd, strict=True)
        ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        if (out_dir / "loss.jsonl").exists():
            _truncate_log(out_dir / "loss.jsonl", 0)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    bar = _progress(config.steps, step, progress)
    log = open(out_dir / "loss.jsonl", "a")
    t_start = time.time()
    running, n_run, last_loss = 0.0, 0, float("nan")
    ck_path = ck
    try:
        while step < config.steps:
            x0 = sample(gen, config.batch_size)
            if config.augment:
                x0 = augment_dihedral(x0, gen)
            t = torch.randint(0, schedule.T, (config.batch_size,), generator=gen)
            n_low = int(round(config.low_t_fraction * config.batch_size))
            if n_low:
                t[:n_low] = torch.randint(0, min(config.low_t_max, schedule.T), (n_low,), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            x0, t, noise = x0.to(device), t.to(device), noise.to(device)
            x_t = sqrt_ab[t].view(-1, 1, 1, 1) * x0 + sqrt_1mab[t].view(-1, 1, 1, 1) * noise
            with autocast:
                pred = model(x_t, t)[:, :C]
            loss = torch.mean((pred.float() - noise) ** 2)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}; lower lr or check the data range")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for group in opt.param_groups:
                group["lr"] = lr_at(config, step)
            if config.grad_clip:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            step += 1
            decay = min(config.ema_decay, (1 + step) / (10 + step)) if config.ema_warmup else config.ema_decay
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    ema[k].mul_(decay).add_(v.float(), alpha=1 - decay)
            last_loss = float(loss.detach())
            running += last_loss
            n_run += 1
            if bar is not None:
                bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                wall = wall_before + time.time() - t_start
                rec = {"step": step, "loss": running / n_run, "wall_s": round(wall, 2)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.4f}")
                running, n_run = 0.0, 0
            out_of_time = max_wall_s is not None and time.time() - t_start > max_wall_s
            if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
                wall = wall_before + time.time() - t_start
                ck_path = _save_checkpoint(
                    out_dir, step, model, ema, opt, gen, config,
                    {"wall_time_s": wall, "last_loss": last_loss, "device": str(device), "init": init,
                     "lr": lr_at(config, step - 1)},
                    config.keep_checkpoints,
                )
            if out_of_time:
                break
    finally:
        log.close()
        if bar is not None:
            bar.close()
    return {"step": step, "last_loss": last_loss, "checkpoint": str(ck_path) if ck_path else None,
            "wall_time_s": wall_before + time.time() - t_start, "ema": ema}
