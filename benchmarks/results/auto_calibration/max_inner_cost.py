"""Cost of the discrepancy x-update's inner iterations against the NFE floor (benchmarks/solvers.py's
problem: compact ADM prior, random weights, 64², 15×15 blur, 50 NFE, 2 threads), side by side."""
import os, sys, time, statistics, torch
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
from ddiff import DDiff
from ddiff.priors import ADMPrior, ADMUNet
from operators import GaussianNoise, get_operator
torch.set_num_threads(2); torch.manual_seed(0)
prior = ADMPrior(ADMUNet.from_preset("compact").eval())
A = get_operator("gaussian_blur", kernel_size=15, std=3.0); noise = GaussianNoise(0.05)
x = torch.rand(1, 1, 64, 64) * 2 - 1; y = noise.sample(A(x), torch.Generator().manual_seed(0)); xt = torch.randn_like(x)
def floor(n):
    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(n): prior.eps(xt, 500)
        return time.perf_counter() - t
floor(3)
for mi in (1, 2, 3, 5, 10):
    r = DDiff(prior, steps=50, max_inner=mi).solve(y, A, noise, generator=torch.Generator().manual_seed(1))
    f = floor(r.nfe)
    print(f"max_inner {mi:2d}: wall {r.seconds:.2f}s floor {f:.2f}s ratio {r.seconds / f:.2f}", flush=True)
