"""The region-by-region audit of a tiled output equals ddiff.audit.audit on whole frames: frame
statistics, cell p-values, flags, the sliding-window map and the tile flags (blur, and super-resolution
where the measurement grid is coarser than the image)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import operators
import storage
from flows.audit import audit_frames
from flows.audit_regions import RegionAudit

SIGMA = 0.05  # model units; stored data = (model + 1) / 2


def _store(tmp_path, op_cfg, f):
    """A 2-frame input y = A(truth) + noise and an output holding x̂ = truth (+ a bump in frame 1)."""
    T, H, W = 2, 45, 58  # measurement grid, not multiples of the tile or the cell
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H * f, 0:W * f] / (H * f)
    truth = np.stack([0.6 * np.sin(3 * yy + k) * np.cos(4 * xx - k) for k in range(T)])[:, None].astype(np.float32)
    op = operators.get_operator(op_cfg["name"], **op_cfg["params"])
    with torch.no_grad():
        y = op(torch.from_numpy(truth)).numpy() + SIGMA * rng.standard_normal((T, 1, H, W)).astype(np.float32)
    np.save(tmp_path / "y.npy", ((y + 1) / 2).astype(np.float32))
    stack = storage.ingest(tmp_path / "y.npy", tmp_path / "in.zarr", axes="tcyx", intensity=(0.0, 1.0), chunk=16)
    x = truth.copy()
    x[1, :, 10 * f:22 * f, 20 * f:34 * f] += 0.4  # structure the data contradicts: flagged windows
    plan = storage.TilePlan((H, W), tile=16, halo=4, overlap=4)
    cfg = {"solver": "ddiff", "prior": "test", "operator": op_cfg, "noise": {"kind": "gaussian", "sigma": SIGMA / 2}}
    out = storage.create_output(tmp_path / "recon.zarr", stack, plan, cfg, prior_sha256="ab" * 32, scale=f)
    op_plan = out.out_plan
    with storage.RunLock(out.path) as lock:
        for frame, k in out.ledger.pending("solved"):
            y0, y1, x0, x1 = op_plan.tile_of(k).blend
            storage.write_tile_result(out.path, frame, k, x[frame, :, y0:y1, x0:x1], run_id=lock.run_id)
        for frame in range(T):
            storage.assemble_frame(out.path, frame, run_id=lock.run_id)
        storage.finalize(out.path, run_id=lock.run_id)
    return storage.open_output(out.path), stack


@pytest.mark.parametrize("op_cfg, f", [({"name": "gaussian_blur", "params": {"kernel_size": 7, "std": 1.5}}, 1),
                                       ({"name": "super_resolution", "params": {"scale": 2}}, 2)])
def test_region_audit_equals_the_whole_frame_audit(tmp_path, op_cfg, f):
    out, stack = _store(tmp_path, op_cfg, f)
    whole, _, _, _ = audit_frames(out.path, 0, 2, window=8)
    # the maps against the whole-frame audit of one frame at a time, as RegionAudit reads them: torch 2.14's CPU
    # conv2d rounds A x̂ of a 2-frame batch differently from one frame (≤ 1.2e-7 model units, 1-2 ulp, against
    # residuals ~0.05), which moves the batched audit's window_p by up to 2.7e-6 relative (8.6e-7 absolute) for
    # the blur; one frame at a time the maps agree to 4e-13 (measured 2026-12-08, torch 2.14.1 CPU, comparing
    # audit_frames(out.path, 0, 2) and audit_frames(out.path, t, t + 1) with RegionAudit on this store)
    single = [audit_frames(out.path, t, t + 1, window=8)[0] for t in range(2)]
    ra = RegionAudit(out, stack, window=8, region=16)  # blocks of 16 measurement px: 3 x 4 per frame
    assert len(list(ra.blocks())) == 12
    Ho, Wo = out.recon().shape[-2:]
    frames = []
    for t in range(2):
        wp = np.full((Ho, Wo), -1.0)
        fa = ra.frame(t, on_window_p=lambda y0, x0, a: wp.__setitem__((slice(y0, y0 + a.shape[0]),
                                                                       slice(x0, x0 + a.shape[1])), a))
        fm = np.zeros((Ho, Wo), bool)
        for y0, x0, a in ra.flag_blocks(fa):
            fm[y0:y0 + a.shape[0], x0:x0 + a.shape[1]] = a
        frames.append(fa)
        np.testing.assert_allclose(wp, single[t].window_p[0].numpy(), rtol=1e-9, atol=1e-12, equal_nan=True)
        assert np.array_equal(fm, single[t].flag_map[0].numpy())
        assert np.array_equal(fm, whole.flag_map[t].numpy())
        cores = [whole.flag_map[t, c[0]:c[1], c[2]:c[3]].any().item() for c in (tl.core for tl in out.out_plan)]
        assert np.array_equal(ra.tile_flags(fa), cores)
    res = ra.result(frames)
    for name in ("stat_mean", "stat_std", "stat_k3", "dof"):
        np.testing.assert_allclose(getattr(res, name).numpy(), getattr(whole, name).numpy(), rtol=1e-12, err_msg=name)
    # S: the whole-frame Gaussian path sums ‖y − A x̂‖² in float32 (ddiff.metrics.chi2_reduced), the blocks
    # sum float64 d_i: equal to float32 rounding (measured: 5e-8 relative)
    for name in ("stat", "chi2_nu", "z", "p_value", "p_value_low"):
        np.testing.assert_allclose(getattr(res, name).numpy(), getattr(whole, name).numpy(), rtol=1e-6, atol=1e-5,
                                   err_msg=name)
    np.testing.assert_allclose(res.region_p.numpy(), torch.cat([a.region_p for a in single]).numpy(), rtol=1e-9,
                               equal_nan=True)
    assert np.array_equal(res.region_flag.numpy(), whole.region_flag.numpy())
    assert res.region_flag[1].sum() > 0 and not res.region_flag[0].any()  # the bump is found, frame 0 is clean
    assert np.array_equal(res.flagged.numpy(), whole.flagged.numpy())
