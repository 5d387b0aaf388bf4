"""max_inner 5 vs 10: quality on training crops (4 crops, seed 5), Gaussian deblurring and ×4 SR, 100 and 20 NFE."""
import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from proto import *
torch.set_num_threads(2)
prior = load_prior("default")
for task in ("gaussian_blur", "super_resolution"):
    x, y, A, noise = setup(task, n=4, seed=5)
    for nfe in (100, 20):
        for mi in (10, 5, 3):
            run(DDiff(prior, steps=nfe, max_inner=mi), x, y, A, noise, f"{task} nfe {nfe} max_inner {mi}")
