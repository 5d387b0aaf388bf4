import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from proto import *
from ddiff import SeedMean
torch.set_num_threads(1)
prior = load_prior("default")
for task in ("gaussian_blur", "inpainting_random"):
    x, y, A, noise = setup(task, n=4, seed=5)
    print(task, flush=True)
    run(DDiff(prior, steps=100), x, y, A, noise, "auto 1x100")
    run(SeedMean(DDiff(prior, steps=25), 4), x, y, A, noise, "auto mean 4x25")
    run(SeedMean(DDiff(prior, steps=100), 4), x, y, A, noise, "auto mean 4x100")
    run(TVReconstruction(weight=0.01, iters=300), x, y, A, noise, "tv w0.01")
