import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from proto import *
torch.set_num_threads(2)
prior = load_prior("default")
nfe = int(sys.argv[2])
class HQSAuto(DDiffAuto):
    use_dual = False
for task in sys.argv[1].split(","):
    x, y, A, noise = setup(task, n=4)
    print(task, nfe, flush=True)
    run(HQSAuto(prior, steps=nfe, noising="fresh", t0=1), x, y, A, noise, f"hqs-auto fresh")
    run(HQSAuto(prior, steps=nfe, noising="ancestral", t0=50), x, y, A, noise, f"hqs-auto anc50")
    if len(sys.argv) > 3:
        run(build_solver("diffpir", prior, solver_kwargs("diffpir", task, nfe)), x, y, A, noise, "diffpir")
        run(build_solver("tv", prior, solver_kwargs("tv", task, nfe)), x, y, A, noise, "tv")
