import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from proto import *
torch.set_num_threads(2)
prior = load_prior("default")
task = sys.argv[1]; nfe = int(sys.argv[2])
x, y, A, noise = setup(task, n=4)
print(task, nfe)
class HQSAuto(DDiffAuto):
    use_dual = False
for noising, t0 in [("ancestral", 50), ("fresh", 1), ("ancestral", 500)]:
    s = HQSAuto(prior, steps=nfe, noising=noising, t0=t0)
    xs = []
    r, m = run(s, x, y, A, noise, f"hqs-auto {noising} t0={t0}")
