import sys, time, torch
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "..", ".."))
torch.set_num_threads(1)
from ddiff import DDiff, SeedMean
from ddiff.metrics import psnr, chi2_reduced
from ddiff.problems import linear_gaussian_problem
for op, steps, K in [("mask", 1000, 16), ("mask", 1000, 1), ("mask", 300, 32), ("blur", 300, 16)]:
    P = linear_gaussian_problem(op, draws=16)
    ref = psnr(P.posterior.mean, P.x).mean().item()
    t = time.time()
    r = SeedMean(DDiff(P.prior, steps=steps), seeds=K).solve(P.y, P.operator, P.noise, generator=torch.Generator().manual_seed(1))
    p = psnr(r.x, P.x).mean().item(); c = chi2_reduced(P.y, P.operator(r.x), 0.05).mean().item()
    print(f"{op} steps {steps} K={K:2d} PSNR {p:.2f} Bayes {ref:.2f} gap {p-ref:+.2f} chi2 {c:.3f} nfe {r.nfe} {time.time()-t:.0f}s", flush=True)
