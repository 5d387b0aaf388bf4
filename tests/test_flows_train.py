"""train_prior (Zarr crops -> trainer -> exported weights that load_prior reads) on tiny settings,
under Prefect's test harness. The benchmark flow is tested in ``test_bench.py``."""
from __future__ import annotations

import numpy as np
import torch

import flows


def test_train_prior_resumes_and_exports_loadable_weights(flows_env, tmp_path):
    from ddiff.priors import load_prior

    out = tmp_path / "train"
    p = dict(data_store=str(flows_env["input"]), out_dir=str(out), preset="compact", crop=16, steps=2, batch_size=2,
             seed=0)
    r = flows.train_prior(flows.TrainParams(**p), artifacts=False)
    assert r["step"] == 2 and np.isfinite(r["last_loss"])
    r = flows.train_prior(flows.TrainParams(**{**p, "steps": 3, "export": str(tmp_path / "prior.safetensors")}),
                          artifacts=False)
    assert r["step"] == 3  # resumed from step 2, not restarted
    prior = load_prior(str(tmp_path / "prior.safetensors"))
    assert prior.channels == 1
    assert torch.isfinite(prior.eps(torch.zeros(1, 1, 16, 16), 10)).all()


def test_sampler_reads_model_space_crops_from_the_store(flows_env):
    from flows.train import ZarrCropSampler

    s = ZarrCropSampler(flows_env["input"], 16)
    x = s(torch.Generator().manual_seed(0), 3)
    y = 2 * np.load(flows_env["y"]) - 1  # the store's model space (intensity range (0, 1))
    assert x.shape == (3, 1, 16, 16)
    # every crop is a crop of some frame of the stack
    for c in x.numpy():
        hits = [(t, i, j) for t in range(y.shape[0]) for i in range(48 - 15) for j in range(40 - 15)
                if np.allclose(y[t, :, i:i + 16, j:j + 16], c, atol=1e-6)]
        assert hits


def test_ddiff_train_init_from_the_embedded_prior(flows_env, tmp_path):
    """``ddiff train --init default`` starts from the shipped weights: one step whose scheduled lr is 0
    (linear decay to lr_min=0) exports those weights (the EMA ``d·w + (1−d)·w`` up to rounding); the
    recipe options reach the checkpoint's recorded config."""
    import hashlib
    import json

    from safetensors.torch import load_file

    from ddiff.priors.loading import weights_path
    from ddiff.training import latest_checkpoint
    from flows.cli import main

    out, exported = tmp_path / "train", tmp_path / "prior.safetensors"
    assert main(["train", str(flows_env["input"]), str(out), "--preset", "compact", "--crop", "16", "--steps", "1",
                 "--batch-size", "2", "--init", "default", "--lr-schedule", "linear", "--lr-min", "0",
                 "--warmup-steps", "0", "--ema", "0.998", "--low-t-fraction", "0.5", "--export", str(exported),
                 "--no-progress"]) == 0
    ref, got = load_file(str(weights_path("default"))), load_file(str(exported))
    assert ref.keys() == got.keys()
    assert all(torch.allclose(got[k], ref[k], rtol=1e-6, atol=1e-9) for k in ref)
    meta = json.loads((latest_checkpoint(out) / "config.json").read_text())
    assert meta["init"]["sha256"] == hashlib.sha256(weights_path("default").read_bytes()).hexdigest()
    t = meta["train"]
    assert (t["lr_schedule"], t["lr_min"], t["ema_decay"], t["ema_warmup"], t["low_t_fraction"]) == \
        ("linear", 0.0, 0.998, False, 0.5)
