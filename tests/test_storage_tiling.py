"""TilePlan geometry: exact partition, partition of unity, chunk ownership, reflect padding."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from storage import TilePlan

GEOMS = [  # (frame, tile, halo, overlap)
    ((100, 130), 32, 5, 8),
    ((64, 64), 16, 0, 8),      # overlap = tile/2, the largest allowed
    ((70, 33), 32, 3, 16),     # last column core is 1 px wide, narrower than the overlap
    ((50, 50), 64, 2, 0),      # tile larger than the frame
    ((41, 97), (8, 24), 4, 4),  # rectangular tiles
    ((40, 41), 32, None, 8),   # global operator: whole frames
]


@pytest.mark.parametrize("frame,tile,halo,overlap", GEOMS)
def test_cores_partition_and_weights_sum_to_one(frame, tile, halo, overlap):
    plan = TilePlan(frame, tile, halo, overlap)
    H, W = frame
    cover = np.zeros((H, W), np.int64)
    wsum = np.zeros((H, W))
    for t in plan:
        y0, y1, x0, x1 = t.core
        cover[y0:y1, x0:x1] += 1
        w = plan.weights(t)
        assert w.shape == t.blend_shape
        assert w.min() >= 0 and w.max() <= 1
        b0, b1, c0, c1 = t.blend
        wsum[b0:b1, c0:c1] += w
        # weights are 1 on the core away from the boundaries ramps
        assert np.all(w[t.core_in_blend][plan.overlap:-plan.overlap or None, plan.overlap:-plan.overlap or None] == 1)
    assert np.array_equal(cover, np.ones((H, W), np.int64))  # exact partition
    assert np.abs(wsum - 1).max() < 1e-12  # partition of unity everywhere
    if halo is None:
        assert plan.n_tiles == 1 and plan[0].core == plan[0].blend == plan[0].read == (0, H, 0, W)


@pytest.mark.parametrize("frame,tile,halo,overlap", GEOMS)
def test_write_regions_own_distinct_chunks(frame, tile, halo, overlap):
    plan = TilePlan(frame, tile, halo, overlap)
    cy, cx = plan.chunks
    H, W = frame
    owner = -np.ones((-(-H // cy), -(-W // cx)), np.int64)
    for t in plan:
        y0, y1, x0, x1 = t.core
        # every chunk the core touches
        touched = {(i, j) for i in range(y0 // cy, (y1 - 1) // cy + 1) for j in range(x0 // cx, (x1 - 1) // cx + 1)}
        assert len(touched) == 1  # one core == one chunk, aligned to its start
        (i, j), = touched
        assert (y0, x0) == (i * cy, j * cx)
        assert owner[i, j] == -1  # no other tile writes this chunk
        owner[i, j] = t.index
    assert (owner >= 0).all()


def test_read_window_and_contributors():
    plan = TilePlan((100, 130), 32, halo=5, overlap=8)
    for t in plan:
        assert t.read_shape == (t.blend_shape[0] + 10, t.blend_shape[1] + 10)
        iy, ix = t.inner
        assert (iy.stop - iy.start, ix.stop - ix.start) == t.blend_shape
        cs = plan.contributors(t)
        assert t in cs and len(cs) <= 9
        # contributors are exactly the tiles with non-zero weight somewhere on this core
        y0, y1, x0, x1 = t.core
        for s in plan:
            b0, b1, c0, c1 = s.blend
            iy0, iy1, ix0, ix1 = max(y0, b0), min(y1, b1), max(x0, c0), min(x1, c1)
            touches = iy0 < iy1 and ix0 < ix1 and plan.weights(s)[iy0 - b0:iy1 - b0, ix0 - c0:ix1 - c0].max() > 0
            assert touches == (s in cs)
    # the read of a corner tile is the reflect-padded frame (numpy "reflect" == torch "reflect")
    frame = np.arange(100 * 130, dtype=np.float64).reshape(1, 100, 130)
    ref = np.pad(frame, ((0, 0), (5, 5), (5, 5)), mode="reflect")
    for t in (plan[0], plan[len(plan) - 1]):
        (ys, xs), pads = plan.read_window(t)
        got = plan.pad(frame[:, ys, xs], pads)
        y0, y1, x0, x1 = t.read
        assert np.array_equal(got, ref[:, y0 + 5:y1 + 5, x0 + 5:x1 + 5])


def test_scaled_plan_and_serialisation():
    plan = TilePlan((50, 70), 16, halo=2, overlap=4)
    sp = plan.scaled(2)
    assert sp.frame_shape == (100, 140) and sp.chunks == (32, 32) and sp.n_tiles == plan.n_tiles
    for a, b in zip(plan, sp):
        assert b.core == tuple(2 * v for v in a.core) and b.blend == tuple(2 * v for v in a.blend)
    assert TilePlan.from_dict(plan.to_dict()) == plan
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert TilePlan((9, 9), None, None, 0).scaled(3).frame_shape == (27, 27)


def test_invalid_plans():
    with pytest.raises(ValueError, match="overlap"):
        TilePlan((64, 64), 16, 0, 9)
    with pytest.raises(ValueError, match="halo"):
        TilePlan((64, 64), 16, -1, 0)
    with pytest.raises(ValueError, match="out of range"):
        TilePlan((64, 64), 16, 0, 0).tile_of(16)


def test_storage_room_imports():
    """storage may use zarr/xarray/dask/numpy only: importing it must not pull torch or prefect."""
    import subprocess
    import sys
    code = ("import sys, storage; bad = [m for m in ('torch', 'prefect', 'ddiff', 'flows') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
