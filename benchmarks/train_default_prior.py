"""Train the embedded default prior on grayscale crops of the images bundled with scikit-image.

Room: ``benchmarks`` — a script; uses ``ddiff`` (torch) and ``flows.sample_data`` (the
scikit-image pictures and their train/held-out split).

Data: every natural image that ships inside scikit-image and loads offline (list ``IMAGES``),
converted to grayscale float in ``[0, 1]`` and mapped to model space ``[−1, 1]`` by ``2x − 1``.
The RIGHTMOST 25 % of every image (columns ``≥ floor(0.75 W)``) is held out for evaluation only
(:func:`flows.sample_data.sample_images` returns both parts); training draws random 64×64 crops from the left
75 %, each image equally often, with random flips and 90° rotations.

Reproducible: one seed drives crops, augmentations, timesteps and noise; rerunning with the same
``--out`` resumes from the last checkpoint there (exactly, on CPU).

    OMP_NUM_THREADS=2 python benchmarks/train_default_prior.py --steps 5000 \
        --out /tmp/team/default_prior_run --max-minutes 75

Staged: ``--init default`` (an embedded prior's name, or a weights path) starts a new stage from
those weights with a fresh optimizer; ``--lr-schedule cosine --lr-min 2e-5 --warmup-steps 100``
decays the learning rate over the stage's ``--steps``; ``--no-ema-warmup`` keeps the EMA anchored
at the init weights from step 1. Everything lands in the checkpoints' ``config.json``.
``--export CKPT --export-dir DIR`` writes a checkpoint's EMA to a scratch folder for evaluation.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddiff.priors.adm import PRESETS, ADMUNet  # noqa: E402
from ddiff.priors.loading import weights_path  # noqa: E402
from ddiff.training import CropSampler, TrainConfig, train  # noqa: E402
from flows.sample_data import IMAGES, sample_images  # noqa: E402

#: The default prior's network (1 channel, ~1.9 M parameters, tiles divisible by 8).
DEFAULT_MODEL = dict(PRESETS["compact"])


def export_default(checkpoint_dir, dest_dir=None) -> Path:
    """Copy a checkpoint's EMA weights to ``ddiff/priors/weights/default.safetensors`` (network
    config in the safetensors metadata) plus ``default.json`` (config + training facts)."""
    from safetensors.torch import load_file, save_file

    ck = Path(checkpoint_dir)
    dest = Path(dest_dir) if dest_dir else Path(__file__).resolve().parents[1] / "ddiff" / "priors" / "weights"
    dest.mkdir(parents=True, exist_ok=True)
    meta = json.loads((ck / "config.json").read_text())
    ema = load_file(str(ck / "ema.safetensors"))
    save_file(ema, str(dest / "default.safetensors"), metadata={"ddiff_config": json.dumps(meta["model"])})
    card = {"model": meta["model"], "step": meta["step"], "wall_time_s": meta.get("wall_time_s"),
            "init": meta.get("init"),
            "last_batch_loss": meta.get("last_loss"), "train": meta["train"], "weights": "EMA",
            "data": {"images": list(IMAGES), "holdout": "rightmost 25% of each image", "crop": 64}}
    (dest / "default.json").write_text(json.dumps(card, indent=2))
    (dest / "default.safetensors").chmod(0o644)  # safetensors writes 0600; the package needs it readable
    return dest / "default.safetensors"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5000, help="total optimisation steps")
    ap.add_argument("--out", default="/tmp/team/default_prior_run", help="checkpoint directory")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--low-t-fraction", type=float, default=0.5,
                    help="share of each batch with t < 250 (low-noise emphasis)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=250)
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    ap.add_argument("--model", default=json.dumps(DEFAULT_MODEL), help="ADMConfig as JSON")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--init", default=None, metavar="NAME_OR_PATH",
                    help="start a new stage from these weights ('default' or a .safetensors/.pt path)")
    ap.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine", "linear"))
    ap.add_argument("--lr-min", type=float, default=0.0, help="lr at the last step of a decaying schedule")
    ap.add_argument("--warmup-steps", type=int, default=0, help="linear lr warm-up steps")
    ap.add_argument("--no-ema-warmup", action="store_true",
                    help="full EMA decay from step 1 (for a stage that starts from trained weights)")
    ap.add_argument("--export", metavar="CKPT_DIR", default=None,
                    help="only export CKPT_DIR's EMA weights as the embedded default prior, then exit")
    ap.add_argument("--export-dir", default=None,
                    help="with --export: write default.safetensors/.json here instead of ddiff/priors/weights")
    args = ap.parse_args(argv)
    if args.export:
        path = export_default(args.export, args.export_dir)
        print(f"exported {args.export} -> {path} ({path.stat().st_size / 2**20:.2f} MiB)")
        return {"exported": str(path)}

    torch.manual_seed(args.seed)  # network initialisation
    net = ADMUNet(**json.loads(args.model))
    train_parts, _, names = sample_images()
    usable = [im for im in train_parts if min(im.shape) >= args.crop]
    sampler = CropSampler(usable, args.crop, weighting="image")
    n_params = sum(p.numel() for p in net.parameters())
    print(f"images: {names}; {len(usable)} usable for {args.crop}px crops; network {n_params/1e6:.2f} M params",
          flush=True)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, ema_decay=args.ema,
                      checkpoint_every=args.checkpoint_every, seed=args.seed,
                      low_t_fraction=args.low_t_fraction, lr_schedule=args.lr_schedule, lr_min=args.lr_min,
                      warmup_steps=args.warmup_steps, ema_warmup=not args.no_ema_warmup)
    init = None if args.init is None else weights_path(args.init)
    t0 = time.time()
    res = train(net, sampler, cfg, args.out, resume=not args.no_resume, device=args.device,
                max_wall_s=None if args.max_minutes is None else 60 * args.max_minutes, init_from=init)
    summary = {k: v for k, v in res.items() if k != "ema"}
    summary["this_call_s"] = time.time() - t0
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
