"""Validity masks (issue 13, item 4): invalid entries leave the likelihood, the gradient, χ²'s m, the
audit's counts and the residual maps — a reconstruction from data with 1 % dead pixels equals the
reconstruction of the same data with those pixels simply unobserved."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import operators as O
import storage
from ddiff import DDiff
from ddiff.audit import audit
from ddiff.problems import linear_gaussian_problem
from ddiff.solvers.data_fit import measurement_count
from operators.noise_estimate import fluorescence_scene, simulate_camera

TOL = 1e-4  # model-space units (images span [-1, 1]): float32 summation order is the only difference


class Observed(nn.Module):
    """The reference: ``A`` followed by keeping only the observed entries — a measurement vector
    ``(B, m)`` with the dead pixels simply absent."""

    linear = True
    halo = None

    def __init__(self, A, valid: torch.Tensor):
        super().__init__()
        self.A, self.shape = A, valid.shape
        self.idx = valid.reshape(-1).nonzero().squeeze(1)

    def forward(self, x):
        return self.A(x).reshape(x.shape[0], -1)[:, self.idx]

    def adjoint(self, r):
        z = torch.zeros((r.shape[0], int(np.prod(self.shape))), dtype=r.dtype)
        z[:, self.idx] = r
        return self.A.adjoint(z.reshape(r.shape[0], *self.shape))


def _dead(shape, frac=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) >= frac


@pytest.mark.parametrize("camera", [False, True], ids=["gaussian-cgls", "camera-descent"])
def test_dead_pixels_equal_unobserved_pixels_in_the_solver(camera):
    size, draws, steps = (32, 2, 12) if not camera else (24, 1, 5)  # the exact camera likelihood is costly
    P = linear_gaussian_problem("blur", size=size, draws=draws)
    A, x_true = P.operator, P.x.float()
    valid = _dead((1, size, size))
    if camera:  # counts of a 2.5 e⁻/ADU camera; model = (ADU − 100)/400 − 1
        noise = O.CameraNoise(2.5, 100.0, 3.0, 1 / 400, -1.25)
        y = noise.sample(A(x_true), torch.Generator().manual_seed(3)).float()
    else:
        noise, y = P.noise, P.y.float()
    V = torch.broadcast_to(valid, y.shape)
    garbage = torch.where(V, y, torch.full_like(y, 7.0))  # a dead pixel reads anything
    Av = O.Validity(A, V, fill=noise.neutral())
    assert int(measurement_count(garbage, Av)[0]) == int(valid.sum()) < size * size
    solver = DDiff(P.prior, **DDiff.auto(steps))
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(draws)]  # noqa: E731
    x_mask = solver.solve(Av.apply(garbage), Av, noise, generator=gens()).x
    ref_op = Observed(A, valid)
    y_obs = y.reshape(draws, -1)[:, ref_op.idx]
    x_ref = solver.solve(y_obs, ref_op, noise, generator=gens(), x_shape=tuple(x_true.shape)).x
    err = float((x_mask - x_ref).abs().max())
    print(f"\ndead pixels ({1 - float(valid.double().mean()):.1%}) vs unobserved, {'camera' if camera else 'Gaussian'}: "
          f"max |Δx| = {err:.2e} (model units)")
    assert err < TOL, err
    # and the dead pixels did matter to nothing: other garbage, same answer
    x_other = solver.solve(Av.apply(torch.where(V, y, -y)), Av, noise, generator=gens()).x
    assert torch.equal(x_mask, x_other)


def test_audit_counts_only_valid_entries():
    P = linear_gaussian_problem("blur", size=16, draws=3)
    valid = _dead((1, 16, 16), frac=0.1)
    V = torch.broadcast_to(valid, P.y.shape)
    Av = O.Validity(P.operator, V)
    y = Av.apply(torch.where(V, P.y, torch.full_like(P.y, 1e6)))
    res = audit(P.x, y, Av, P.noise, window=8)
    assert torch.all(res.dof == float(valid.sum()))
    ref = ((P.y - P.operator(P.x)) ** 2 * valid).flatten(1).sum(1) / (float(valid.sum()) * P.noise.sigma**2)
    torch.testing.assert_close(res.chi2_nu, ref.double())


def test_ingest_masks_saturation_mask_file_and_bad_pixels(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(100, 4000, size=(3, 1, 20, 24)).astype(np.uint16)
    data[0, 0, 2, 3] = 65535  # saturated at the dtype's maximum
    data[1, 0, 5, 5] = 4095  # saturated at a 12-bit camera's level
    bad = np.zeros((20, 24), np.uint8)
    bad[7, 8] = 1
    user = np.ones((3, 20, 24), bool)
    user[2, 10, 10] = False
    np.save(tmp_path / "d.npy", data)
    np.save(tmp_path / "bad.npy", bad)
    np.save(tmp_path / "user.npy", user)
    st = storage.ingest(tmp_path / "d.npy", tmp_path / "a.zarr", axes="tcyx")
    assert st.meta["validity"]["saturated"] == 1 and not st.valid[:][0, 0, 2, 3]
    st = storage.ingest(tmp_path / "d.npy", tmp_path / "b.zarr", axes="tcyx", saturation=4095,
                        mask=tmp_path / "user.npy", bad_pixels=tmp_path / "bad.npy")
    v = st.valid[:]
    expect = np.ones(data.shape, bool)
    expect[0, 0, 2, 3] = expect[1, 0, 5, 5] = expect[2, 0, 10, 10] = False
    expect[:, 0, 7, 8] = False
    np.testing.assert_array_equal(v, expect)
    vd = st.meta["validity"]
    assert (vd["saturated"], vd["mask"], vd["bad_pixels"], vd["invalid"]) == (2, 1, 3, 6)
    assert "sha256" in vd["bad_pixels_file"] and np.array_equal(st.array[:], data)  # data unchanged
    clean = storage.ingest(tmp_path / "d.npy", tmp_path / "c.zarr", axes="tcyx", saturation=None)
    assert clean.valid is None and clean.meta["validity"]["invalid"] == 0
    with pytest.raises(storage.StorageError, match=r"bad_pixels has shape \(5, 5\)"):
        np.save(tmp_path / "small.npy", np.zeros((5, 5)))
        storage.ingest(tmp_path / "d.npy", tmp_path / "e.zarr", axes="tcyx", bad_pixels=tmp_path / "small.npy")
    with pytest.raises(ValueError, match="saturation="):
        storage.ingest(tmp_path / "d.npy", tmp_path / "f.zarr", axes="tcyx", saturation="high")


@pytest.fixture(scope="module")
def dead_pixel_stores(tmp_path_factory):
    """Camera counts with 1 % dead pixels, ingested twice with the same bad-pixel map: once with the
    dead pixels reading 0, once reading the true counts (i.e. the map alone makes them unobserved)."""
    d = tmp_path_factory.mktemp("dead")
    lam = fluorescence_scene(2, 48, torch.Generator().manual_seed(0), background=20, peak=800)
    u = simulate_camera(lam, 2.5, 100, 3, torch.Generator().manual_seed(1)).numpy().astype(np.uint16)[:, None]
    dead = ~_dead((48, 48), seed=4).numpy()
    np.save(d / "bad.npy", dead.astype(np.uint8))
    broken = u.copy()
    broken[:, :, dead] = 0
    np.save(d / "broken.npy", broken)
    np.save(d / "good.npy", u)
    return d, dead


def test_dead_pixels_through_the_flows(flows_env, dead_pixel_stores):
    import flows

    d, dead = dead_pixel_stores
    outs = []
    for name in ("broken", "good"):
        flows.ingest_stack(flows.IngestParams(source=str(d / f"{name}.npy"), store=str(d / f"{name}.zarr"), axes="tcyx",
                                              bad_pixels=str(d / "bad.npy"), intensity=[100, 500]), artifacts=False)
        p = flows.ReconstructParams(input_store=str(d / f"{name}.zarr"), output_store=str(d / f"{name}.out.zarr"),
                                    prior=str(flows_env["prior"]), operator={"name": "gaussian_blur", "params": {"kernel_size": 7, "std": 1.0}},
                                    noise={"kind": "poisson_gaussian", "gain": 2.5, "offset": 100, "read_noise": 3},
                                    solver={"name": "ddiff", "steps": 6}, tile=24, overlap=4,
                                    execution={"batch_size": 4, "torch_threads": 1}, artifacts=False)
        flows.reconstruct_stack(p)
        outs.append(storage.open_output(p.output_store))
    a, b = (o.recon()[:] for o in outs)
    np.testing.assert_array_equal(a, b)  # what the dead pixels read never reaches the solution
    ds = outs[0].open_diagnostics()
    assert np.isnan(ds["residual"].values[:, 0][:, dead]).all()
    assert np.isfinite(ds["residual"].values[:, 0][:, ~dead]).all()
    # m counts valid entries of each tile's blend window
    plan = outs[0].plan
    for k, tile in enumerate(plan):
        (y0, y1, x0, x1) = tile.blend
        n_valid = int((~dead[max(y0, 0):y1, max(x0, 0):x1]).sum())
        assert np.all(ds["dof"].values[:, k] == n_valid)
    res = flows.audit_reconstruction(flows.AuditParams(output_store=str(d / "broken.out.zarr"), artifacts=False))
    aud = outs[0].group()["audit"] if "audit" in outs[0].group() else None
    assert aud is not None and len(res["chi2_nu"]) == 2
