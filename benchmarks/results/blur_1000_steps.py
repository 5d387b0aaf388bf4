# One-off check: DDiff with the default prior, paper setting, 1000 steps, on the same 12 held-out
# crops and measurements as benchmarks/default_prior_vs_tv.py. Run: OMP_NUM_THREADS=2 python benchmarks/results/blur_1000_steps.py
# Measured 2026-11-30: PSNR 28.80 SSIM 0.725 (264 s).
import sys, time, torch
sys.path[:] = [p for p in sys.path if not p.endswith("benchmarks")]
from ddiff import DDiff
from ddiff.metrics import psnr, ssim
from ddiff.priors import load_prior
from operators import GaussianNoise, get_operator
from flows.sample_data import crops, sample_images
prior = load_prior("default")
train, held, _ = sample_images()
x_tune = torch.from_numpy(crops(train, 6, 64, seed=1)); x_test = torch.from_numpy(crops(held, 12, 64, seed=2))
noise = GaussianNoise(0.05); A = get_operator("gaussian_blur")
g = torch.Generator().manual_seed(3); y_tune = noise.sample(A(x_tune), g); y_test = noise.sample(A(x_test), g)
hp = DDiff.paper("gaussian_blur")  # 1000 steps
t = time.time()
r = DDiff(prior, **hp).solve(y_test, A, noise, generator=[torch.Generator().manual_seed(i) for i in range(12)])
print(f"gaussian_blur DDiff paper setting 1000 steps: PSNR {psnr(r.x, x_test).mean():.2f} SSIM {ssim(r.x, x_test).mean():.3f} ({time.time()-t:.0f} s)", flush=True)
