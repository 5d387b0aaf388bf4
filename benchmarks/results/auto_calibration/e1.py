import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from proto import *
torch.set_num_threads(2)
prior = load_prior("default")
task = sys.argv[1]; nfe = int(sys.argv[2])
x, y, A, noise = setup(task)
print(task, nfe)
run(build_solver("ddiff", prior, solver_kwargs("ddiff", task, nfe)), x, y, A, noise, "paper")
run(build_solver("diffpir", prior, solver_kwargs("diffpir", task, nfe)), x, y, A, noise, "diffpir")
for noising, t0 in [("ancestral", 50), ("ancestral", 500), ("fresh", 1)]:
    s = DDiffAuto(prior, steps=nfe, noising=noising, t0=t0)
    run(s, x, y, A, noise, f"auto {noising} t0={t0}")
