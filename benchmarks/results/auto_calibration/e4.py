import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from proto import *
from ddiff.solvers.base import randn, per_sample_norm
torch.set_num_threads(2)
prior = load_prior("default")
nfe = int(sys.argv[2])
class RescaledDual(DDiffAuto):
    power = 2.0
    def _run(self, net, y, operator, noise, x_shape, generator, emit):
        sched, dev, dt = net.schedule, y.device, y.dtype
        ts = sched.respace(self.steps)
        x_t = randn(x_shape, generator, dt, dev); u = torch.zeros(x_shape, dtype=dt)
        for i, t in enumerate(ts):
            t_prev = ts[i+1] if i+1 < len(ts) else -1
            ab, ab_prev = sched.abar(t), sched.abar(t_prev)
            z = net.x0(x_t, t)
            x, _ = self.data_step(operator, noise, y, z - u, 0)
            eps_tilde = (x_t - math.sqrt(ab)*x)/math.sqrt(1-ab)
            s = self.noise_scale(ab, ab_prev)
            xi = randn(x.shape, generator, dt, dev) if t > self.t0 and s > 0 else 0.0
            x_t = math.sqrt(ab_prev)*(x+u) + math.sqrt(max(1-ab_prev-s**2, 0.0))*eps_tilde + s*xi
            ratio = (sched.sigma_bar(t_prev) / sched.sigma_bar(t))**self.power if t_prev >= 0 else 0.0
            u = (u + (x - z)) * ratio
        return x_t
for task in sys.argv[1].split(","):
    x, y, A, noise = setup(task, n=4)
    print(task, nfe, flush=True)
    for p in [2.0, 1.0, 0.0]:
        s = RescaledDual(prior, steps=nfe, noising="fresh", t0=1); s.power = p
        run(s, x, y, A, noise, f"dual rescale power {p}")
