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
