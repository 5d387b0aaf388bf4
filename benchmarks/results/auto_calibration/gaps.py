import sys, time, torch
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "..", ".."))
torch.set_num_threads(1)
from ddiff import DDiff, SeedMean
from ddiff.metrics import psnr
from ddiff.problems import linear_gaussian_problem
for op, task in (("mask", "inpainting_random"), ("blur", "gaussian_blur")):
    P = linear_gaussian_problem(op, size=16, draws=16)
    ref = psnr(P.posterior.mean, P.x).mean().item()
    for name, mk in [("auto", lambda: DDiff(P.prior, steps=100)), ("auto-K8", lambda: SeedMean(DDiff(P.prior, steps=100), 8)),
                     ("paper", lambda: DDiff(P.prior, **DDiff.paper(task)))]:
        g = []
        for seed in (1, 2, 3):
            r = mk().solve(P.y, P.operator, P.noise, generator=torch.Generator().manual_seed(seed))
            g.append(psnr(r.x, P.x).mean().item() - ref)
        print(op, name, " ".join(f"{v:+.2f}" for v in g), flush=True)
