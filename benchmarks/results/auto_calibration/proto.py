"""Prototype: DDiff with a discrepancy-projection x-update (CGLS stopped at χ² = τ)."""
import math, sys, time, torch, numpy as np
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "..", ".."))
from ddiff import DDiff, DiffPIR, TVReconstruction
from ddiff.solvers.ddiff import DDiff as _D
from ddiff.solvers.base import rdot as _rdot, real_part as _real
from ddiff.priors import load_prior
from flows.bench.protocol import task_operator_params, solver_kwargs, build_solver, image_metrics
from operators import GaussianNoise, get_operator
from flows.sample_data import sample_images, crops

def project(operator, y, v, eps, iters):
    x = v.clone()
    r = y - operator(x)
    rr = _rdot(r, r)
    s = _real(operator.adjoint(r)); p = s.clone(); gam = _rdot(s, s)
    done = rr <= eps
    for k in range(iters):
        if done.all(): break
        q = operator(p); qq = _rdot(q, q).clamp_min(1e-30)
        alpha = gam / qq
        rr_new = rr - 2*alpha*_rdot(r, q) + alpha**2*qq
        cross = rr_new < eps
        # smallest root of qq a^2 - 2<r,q> a + rr - eps = 0
        b = _rdot(r, q); disc = (b*b - qq*(rr - eps)).clamp_min(0)
        a_hit = (b - disc.sqrt())/qq
        a = torch.where(done, torch.zeros_like(alpha), torch.where(cross, a_hit, alpha))
        x = x + a*p; r = r - a*q; rr = _rdot(r, r)
        done = done | cross
        s = _real(operator.adjoint(r)); gnew = _rdot(s, s)
        p = s + (gnew/gam.clamp_min(1e-30))*p; gam = gnew
    return x

class DDiffAuto(_D):
    tau = 1.0; iters = 10
    def data_step(self, operator, noise, y, v, gamma):
        sigma = noise.effective_sigma(y)
        m = y[0].numel()*(2 if y.is_complex() else 1)
        return project(operator, y, v, self.tau*m*sigma**2, self.iters), None

def setup(task, n=6, size=64, sigma=0.05, held=False, seed=0):
    tr, he, _ = sample_images()
    x = torch.from_numpy(crops(he if held else tr, n, size, seed=seed))
    A = get_operator(task, **task_operator_params(task, size))
    noise = GaussianNoise(sigma)
    y = noise.sample(A(x), torch.Generator().manual_seed(123))
    return x, y, A, noise

def run(solver, x, y, A, noise, label, out=None):
    t = time.time()
    gens = [torch.Generator().manual_seed(1000+i) for i in range(x.shape[0])]
    r = solver.solve(y, A, noise, generator=gens)
    m = image_metrics(r.x, x, y, A, noise)
    print(f"{label:50s} PSNR {m['psnr'].mean():6.2f}  chi2 {m['chi2_nu'].mean():6.3f} [{m['chi2_nu'].min():.2f},{m['chi2_nu'].max():.2f}]  {time.time()-t:5.1f}s", flush=True)
    return r, m
