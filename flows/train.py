"""``train_prior``: train a compact diffusion prior on clean images held in an ingested Zarr store.

Room: ``flows`` — prefect, ``storage`` (reading crops), ``ddiff.training`` (the trainer).

Data never sits whole in memory: :class:`ZarrCropSampler` reads each random crop straight from the
store (one chunk-aligned read per crop), mapped to model space by the store's intensity map; all
randomness comes from the trainer's generator, so the trainer's exact resume still holds.
Rerunning with the same ``out_dir`` resumes from its last checkpoint. ``init`` starts a new stage
from existing weights (e.g. ``"default"`` to fine-tune the embedded prior on your data); the EMA then
starts at those weights without warm-up.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

import storage
from ddiff.priors.adm import PRESETS, ADMConfig, ADMUNet
from ddiff.priors.loading import weights_path
from ddiff.training import TrainConfig, latest_checkpoint, train

from .params import TrainParams

__all__ = ["train_prior", "ZarrCropSampler", "export_weights"]


class ZarrCropSampler:
    """``sample(generator, batch) -> (B, C, crop, crop)`` model-space crops read from a stack.

    Frames are drawn uniformly, positions uniformly inside the frame (frames must be at least
    ``crop`` pixels on each side)."""

    def __init__(self, store, crop: int):
        self.stack = storage.open_stack(store)
        H, W = self.stack.frame_shape
        if H < crop or W < crop:
            raise ValueError(f"crop={crop} is larger than the frames {H}x{W} of {store}; lower --crop")
        self.crop = int(crop)

    @property
    def channels(self) -> int:
        return self.stack.shape[1]

    def __call__(self, generator: torch.Generator, batch: int) -> torch.Tensor:
        T, C, H, W = self.stack.shape
        c = self.crop
        out = np.empty((batch, C, c, c), np.float32)
        for b in range(batch):
            t = int(torch.randint(0, T, (1,), generator=generator))
            y = int(torch.randint(0, H - c + 1, (1,), generator=generator))
            x = int(torch.randint(0, W - c + 1, (1,), generator=generator))
            out[b] = self.stack.to_model(self.stack.array[t, :, y:y + c, x:x + c])
        return torch.from_numpy(out)


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` when it holds no file (only empty sub-folders): what a failed fresh start made."""
    if folder.is_dir() and not any(f.is_file() or f.is_symlink() for f in folder.rglob("*")):
        shutil.rmtree(folder, ignore_errors=True)


def export_weights(checkpoint_dir, dest) -> Path:
    """EMA weights of a checkpoint -> one ``.safetensors`` loadable by ``load_prior(dest)``."""
    from safetensors.torch import load_file, save_file

    ck, dest = Path(checkpoint_dir), Path(dest)
    meta = json.loads((ck / "config.json").read_text())
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(ck / "ema.safetensors")), str(dest), metadata={"ddiff_config": json.dumps(meta["model"])})
    return dest


@flow(name="train-prior", persist_result=False)
def train_prior(params: TrainParams, artifacts: bool = True) -> dict:
    """Train (or resume) ``params.preset`` on crops of ``params.data_store``; returns the trainer's
    summary dict (+ ``exported`` when ``params.export`` is set)."""
    from .reconstruct import artifact_key

    p = params if isinstance(params, TrainParams) else TrainParams.model_validate(params)
    logger = get_run_logger()
    if p.preset not in PRESETS:
        raise ValueError(f"unknown preset {p.preset!r}; available: {sorted(PRESETS)}")
    sampler = ZarrCropSampler(p.data_store, p.crop)
    cfg = dict(PRESETS[p.preset])
    cfg["in_channels"] = sampler.channels
    model = ADMUNet(ADMConfig(**cfg))
    if p.crop % model.downsampling:
        raise ValueError(f"crop={p.crop} must be divisible by the network's downsampling {model.downsampling}")
    tc = TrainConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr, seed=p.seed,
                     checkpoint_every=max(1, min(500, p.steps or 1)), lr_schedule=p.lr_schedule, lr_min=p.lr_min,
                     warmup_steps=p.warmup_steps, ema_decay=p.ema_decay, ema_warmup=p.init is None,
                     low_t_fraction=p.low_t_fraction)
    init = None if p.init is None else weights_path(p.init)
    logger.info("training %s (%d params) on %s crops of %s", p.preset, sum(q.numel() for q in model.parameters()),
                p.crop, p.data_store)
    from .tiles import _device_guard

    device = p.device or ("cuda" if torch.cuda.is_available() else "cpu")
    fresh = not Path(p.out_dir).exists()
    try:
        with _device_guard(device, p.gpu_limit):  # the whole training run holds one GPU slot
            summary = train(model, sampler, tc, p.out_dir, resume=True, device=device, progress=False,
                            max_wall_s=None if p.max_minutes is None else 60.0 * p.max_minutes, init_from=init)
    except BaseException:
        if fresh:  # a refused --init (or any failure before the first checkpoint) leaves no empty folder behind
            _remove_if_empty(Path(p.out_dir))
        raise
    if p.export:
        ck = latest_checkpoint(p.out_dir)
        if ck is None:
            raise ValueError(f"no checkpoint in {p.out_dir} to export (steps=0?)")
        summary["exported"] = str(export_weights(ck, p.export))
    if artifacts:
        create_markdown_artifact(
            f"# train_prior\n\n- data: `{p.data_store}`\n- preset: `{p.preset}`, crop {p.crop}, batch {p.batch_size}\n"
            f"- step {summary.get('step')}, last loss {summary.get('last_loss')}\n- checkpoint: `{summary.get('checkpoint')}`\n"
            + (f"- exported: `{summary['exported']}`\n" if p.export else ""),
            key=artifact_key("train", p.out_dir), description="prior training summary")
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, type(None)))}
