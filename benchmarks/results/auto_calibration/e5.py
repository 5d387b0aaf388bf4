import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from proto import *
torch.set_num_threads(2)
prior = load_prior("default")
nfe = int(sys.argv[2])
for task in sys.argv[1].split(","):
    x, y, A, noise = setup(task, n=4)
    print(task, nfe, flush=True)
    for noising, t0 in [("fresh", 1), ("ancestral", 500), ("ancestral", 200), ("ancestral", 50)]:
        run(DDiff(prior, steps=nfe, noising=noising, t0=t0), x, y, A, noise, f"auto {noising} t0={t0}")
