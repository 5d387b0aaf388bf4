import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from proto import *
torch.set_num_threads(1)
prior = load_prior("default")
x, y, A, noise = setup("gaussian_blur", n=4)
for mi in (10, 3, 1):
    its = []
    s = DDiff(prior, steps=100, max_inner=mi)
    gens = [torch.Generator().manual_seed(1000+i) for i in range(4)]
    t = time.time()
    r = s.solve(y, A, noise, generator=gens, callback=lambda d: its.append(d["inner"]))
    m = image_metrics(r.x, x, y, A, noise)
    print(f"max_inner {mi}: PSNR {m['psnr'].mean():.2f} chi2 {m['chi2_nu'].mean():.3f} mean inner {sum(its)/len(its):.2f} first10 {its[:10]} last {its[-5:]} {time.time()-t:.0f}s", flush=True)
