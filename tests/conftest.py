"""Shared fixtures. Prefect runs against a temporary database for the whole session (one ephemeral
API server, started once: ~10 s here), with telemetry off so nothing tries the network."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test harness (temporary SQLite database + API server) for the whole session.
    Not autouse: only the tests that run flows pay for it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=600):  # a loaded 2-core machine can take minutes
        yield


# ---- flows helpers: a tiny prior checkpoint and a small degraded stack, both real files ----

TINY = dict(in_channels=1, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(), num_heads=1,
            num_head_channels=-1, learn_sigma=False, norm_groups=8)
BLUR = {"name": "gaussian_blur", "params": {"kernel_size": 7, "std": 1.0}}
SIGMA = 0.05
SIGMA_DATA = SIGMA / 2  # the same noise in the stored data's units (stored = (model + 1)/2)


def tiny_prior(path: Path, seed: int = 0, channels: int = 1) -> Path:
    """A 2-level ADM U-Net with random weights, saved as safetensors with its config (load_prior reads it).
    Its last convolution is zero-initialised (as in guided-diffusion), so eps = 0: a flat prior."""
    from safetensors.torch import save_file

    from ddiff.priors.adm import ADMConfig, ADMUNet

    cfg = ADMConfig(**{**TINY, "in_channels": channels})
    torch.manual_seed(seed)
    net = ADMUNet(cfg)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"ddiff_config": json.dumps(cfg.to_dict())})
    return path


def smooth_truth(frames: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """(T, 1, h, w) smooth images in [-0.8, 0.8] (sums of a few random sinusoids)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.zeros((frames, 1, h, w), np.float32)
    for t in range(frames):
        img = sum(rng.uniform(-1, 1) * np.cos(2 * np.pi * (rng.uniform(0, 3) * yy + rng.uniform(0, 3) * xx)
                                              + rng.uniform(0, 6)) for _ in range(4))
        out[t, 0] = 0.8 * img / np.abs(img).max()
    return out


def degraded_stack(folder: Path, frames: int = 2, h: int = 48, w: int = 40, seed: int = 0) -> dict:
    """truth/degraded .npy in physical units [0, 1] (model = 2p - 1): blurred + Gaussian noise SIGMA."""
    import operators

    x = torch.from_numpy(smooth_truth(frames, h, w, seed))
    A = operators.get_operator(BLUR["name"], **BLUR["params"])
    with torch.no_grad():
        y = operators.GaussianNoise(SIGMA).sample(A(x), torch.Generator().manual_seed(seed + 1))
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "y.npy", ((y.numpy() + 1) / 2).astype(np.float32))
    np.save(folder / "x.npy", ((x.numpy() + 1) / 2).astype(np.float32))
    return {"y": folder / "y.npy", "x": folder / "x.npy", "truth_model": x, "y_model": y}


@pytest.fixture(scope="session")
def flows_env(tmp_path_factory, prefect_harness):
    """A tiny prior, a 2-frame 48x40 blurred+noisy stack ingested through the ingest flow."""
    import flows

    d = tmp_path_factory.mktemp("flows_env")
    prior = tiny_prior(d / "tiny.safetensors")
    data = degraded_stack(d)
    info = flows.ingest_stack(flows.IngestParams(source=str(data["y"]), store=str(d / "in.zarr"), axes="tcyx",
                                                 intensity=[0, 1]), artifacts=False)
    return {"dir": d, "prior": prior, "input": Path(info["store"]), **data}
