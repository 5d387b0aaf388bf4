import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from proto import *
torch.set_num_threads(1)
prior = load_prior("default")
for task in ("gaussian_blur", "inpainting_random", "super_resolution"):
    x, y, A, noise = setup(task, n=4, seed=5)
    last = {}
    gens = [torch.Generator().manual_seed(1000+i) for i in range(4)]
    r = DDiff(prior, steps=100).solve(y, A, noise, generator=gens, callback=lambda d: last.update(d))
    for name, est in (("x+u", r.x), ("x", last["x"])):
        m = image_metrics(est, x, y, A, noise)
        print(task, name, f"{m['psnr'].mean():.2f}", f"{m['chi2_nu'].mean():.3f}", [round(v,3) for v in m['chi2_nu'].tolist()], flush=True)
