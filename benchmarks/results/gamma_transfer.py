# Exploration (not a default): how should DDiff's step size γ₀ transfer from the paper's 1000 steps
# to a smaller NFE budget? On 4 TRAINING crops (never the evaluation crops), default prior, σ_y 0.05,
# paper settings with γ₀ × {1, √(1000/N), 1000/N}.  Run: OMP_NUM_THREADS=2 python benchmarks/results/gamma_transfer.py
import math, sys, time
sys.path[:] = [p for p in sys.path if not p.endswith("results") and not p.endswith("benchmarks")]
import torch
from flows.bench import protocol as B
from ddiff.priors import load_prior
from operators import GaussianNoise, get_operator
from flows.sample_data import crops, sample_images

prior = load_prior("default")
train, _, _ = sample_images()
x = torch.from_numpy(crops(train, 4, 64, seed=1))
noise = GaussianNoise(0.05)
print("task               NFE  γ₀ factor        PSNR   χ²_ν     s")
for task in ("gaussian_blur", "inpainting_random"):
    A = get_operator(task, **B.task_operator_params(task, 64))
    y = noise.sample(A(x), torch.Generator().manual_seed(7))
    for nfe in (20, 50, 100, 200):
        for name, f in (("1", 1.0), ("sqrt(1000/N)", math.sqrt(1000 / nfe)), ("1000/N", 1000 / nfe)):
            kw = B.solver_kwargs("ddiff", task, nfe)
            kw["gamma0"] *= f
            t = time.time()
            r = B.solve_best_of(B.build_solver("ddiff", prior, kw), y, A, noise, x)
            print(f"{task:<18} {nfe:4d}  {name:<14} {r.metrics['psnr'].mean():6.2f} {r.metrics['chi2_nu'].mean():7.2f} {time.time() - t:5.1f}",
                  flush=True)
