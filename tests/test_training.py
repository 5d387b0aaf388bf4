"""ε-prediction training, checkpoints and exact resume (ddiff.training)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddiff.priors import ADMUNet, load_prior
from ddiff.training import CropSampler, TrainConfig, augment_dihedral, latest_checkpoint, load_ema, train

TINY = dict(in_channels=1, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(2,),
            num_head_channels=16, learn_sigma=True, norm_groups=8)


def _images():
    rng = np.random.default_rng(0)
    return [np.tanh(rng.standard_normal((40, 52))).astype(np.float32),
            np.tanh(rng.standard_normal((1, 24, 30))).astype(np.float32)]


def _run(out, steps, resume=True):
    torch.manual_seed(0)
    net = ADMUNet(**TINY)
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-3, checkpoint_every=10, log_every=5, seed=3,
                      low_t_fraction=0.5)
    res = train(net, CropSampler(_images(), 16), cfg, out, resume=resume, device="cpu", progress=False)
    return net, res


def test_resume_10_plus_10_equals_20_bit_exact(tmp_path):
    net20, res20 = _run(tmp_path / "a", 20)
    _run(tmp_path / "b", 10)
    net_b, res_b = _run(tmp_path / "b", 20)  # fresh init, then resumes from step 10
    assert res_b["step"] == 20
    for k, v in net20.state_dict().items():
        assert torch.equal(v, net_b.state_dict()[k]), k
    for k in res20["ema"]:
        assert torch.equal(res20["ema"][k], res_b["ema"][k]), k
    assert res20["last_loss"] == res_b["last_loss"]
    def log(d):
        return [(r["step"], r["loss"]) for r in map(json.loads, (d / "loss.jsonl").read_text().splitlines())]

    assert log(tmp_path / "b") == log(tmp_path / "a")  # same losses, no duplicate lines
    assert [s for s, _ in log(tmp_path / "a")] == [5, 10, 15, 20]
    # the optimizer really moved the weights and EMA lags behind them
    assert not torch.equal(net20.state_dict()["out.2.weight"], torch.zeros_like(net20.out[2].weight))
    assert not torch.equal(res20["ema"]["out.2.weight"], net20.state_dict()["out.2.weight"])
    # without resume the same directory restarts from scratch (same result as a fresh run)
    net_c, _ = _run(tmp_path / "b", 10, resume=False)
    net10, _ = _run(tmp_path / "c", 10)
    assert all(torch.equal(v, net10.state_dict()[k]) for k, v in net_c.state_dict().items())
    assert [json.loads(x)["step"] for x in (tmp_path / "b" / "loss.jsonl").read_text().splitlines()] == [5, 10]


def test_checkpoint_files_log_and_loading(tmp_path):
    net, res = _run(tmp_path, 10)
    ck = latest_checkpoint(tmp_path)
    assert ck is not None and ck.name == "ckpt-00000010"
    assert {p.name for p in ck.iterdir()} == {"model.safetensors", "ema.safetensors", "config.json", "state.pt"}
    state = torch.load(ck / "state.pt", weights_only=True)  # tensors and plain containers only
    assert state["step"] == 10
    ema = load_file(str(ck / "ema.safetensors"))
    assert all(torch.equal(ema[k], res["ema"][k]) for k in ema)
    lines = [json.loads(x) for x in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 10] and all(np.isfinite(r["loss"]) for r in lines)
    meta = json.loads((ck / "config.json").read_text())
    assert meta["model"] == net.config.to_dict() and meta["step"] == 10
    ema_net, _ = load_ema(ck)
    prior = load_prior(ck / "ema.safetensors")  # config from the file's metadata, not guessed
    assert prior.config.to_dict() == net.config.to_dict()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    # load_prior runs channels-last on CPU (another convolution order: equal to float rounding)
    torch.testing.assert_close(prior.eps(x, 100), ema_net(x, torch.tensor([100, 100]))[:, :1], rtol=0, atol=1e-5)


def test_loss_decreases_on_constant_images(tmp_path):
    """A trivially learnable data set: ε̂ must improve well beyond the untrained loss (≈1)."""
    torch.manual_seed(0)
    net = ADMUNet(**TINY)
    cfg = TrainConfig(steps=60, batch_size=8, lr=3e-3, checkpoint_every=1000, log_every=20, seed=0)
    train(net, CropSampler([np.full((16, 16), 0.5, np.float32)], 16), cfg, tmp_path, progress=False)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.6 * losses[0]


def test_augment_gives_dihedral_transforms_and_sampler_crops():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    y = augment_dihedral(x, g)
    for xi, yi in zip(x, y):
        options = [torch.rot90(z, r, dims=(-2, -1)) for z in (xi, xi.flip(-1)) for r in range(4)]
        assert any(torch.equal(yi, o) for o in options)
    im = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    crops = CropSampler([im], 8)(g, 5)
    assert crops.shape == (5, 1, 8, 8)
    for c in crops[:, 0].numpy():  # every crop is a contiguous window of the image
        top, left = divmod(int(c[0, 0]), 30)
        assert np.array_equal(c, im[top:top + 8, left:left + 8])
    with pytest.raises(ValueError, match="smaller than crop"):
        CropSampler([im], 64)


def test_lr_schedule_values():
    from ddiff.training import lr_at

    const = TrainConfig(steps=11, lr=1e-3)
    assert [lr_at(const, s) for s in (0, 5, 10)] == [1e-3] * 3
    cos = TrainConfig(steps=11, lr=1e-3, lr_schedule="cosine", lr_min=1e-4)
    assert lr_at(cos, 0) == pytest.approx(1e-3)
    assert lr_at(cos, 5) == pytest.approx(5.5e-4)  # half-way: the mean of lr and lr_min
    assert lr_at(cos, 10) == pytest.approx(1e-4) and lr_at(cos, 50) == pytest.approx(1e-4)
    assert lr_at(cos, 2) == pytest.approx(1e-4 + 9e-4 * 0.5 * (1 + np.cos(np.pi * 0.2)))
    lin = TrainConfig(steps=11, lr=1e-3, lr_schedule="linear", lr_min=1e-4, warmup_steps=4)
    assert [lr_at(lin, s) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lr_at(lin, 4) == pytest.approx(1e-3)
    assert lr_at(lin, 7) == pytest.approx(5.5e-4) and lr_at(lin, 10) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="lr_min"):
        TrainConfig(lr=1e-4, lr_min=1e-3)


def _init_file(path, seed=5):
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    src = ADMUNet(**TINY)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    return src.state_dict()


def test_init_from_loads_weights_and_schedule_is_applied(tmp_path):
    from ddiff.priors.loading import CheckpointMismatchError

    init_sd = _init_file(tmp_path / "init.safetensors")
    # one step whose scheduled lr is 0 (linear decay to lr_min=0 reached at the last step):
    # the weights must be exactly the init file's, and so must the EMA
    torch.manual_seed(0)
    net = ADMUNet(**TINY)
    assert not torch.equal(net.state_dict()["input_blocks.0.0.weight"], init_sd["input_blocks.0.0.weight"])
    cfg = TrainConfig(steps=1, batch_size=2, lr=1e-3, lr_schedule="linear", lr_min=0.0, seed=3)
    res = train(net, CropSampler(_images(), 16), cfg, tmp_path / "run", device="cpu", progress=False,
                init_from=tmp_path / "init.safetensors")
    for k, v in net.state_dict().items():
        assert torch.equal(v, init_sd[k]), k
        assert torch.allclose(res["ema"][k], init_sd[k], rtol=1e-6, atol=1e-9), k  # d·w + (1−d)·w
    meta = json.loads((latest_checkpoint(tmp_path / "run") / "config.json").read_text())
    assert meta["init"]["path"].endswith("init.safetensors") and len(meta["init"]["sha256"]) == 64
    assert meta["train"]["lr_schedule"] == "linear" and meta["lr"] == 0.0
    # the same step at constant lr moves the weights: the schedule, not chance, kept them
    torch.manual_seed(0)
    net_c = ADMUNet(**TINY)
    train(net_c, CropSampler(_images(), 16), TrainConfig(steps=1, batch_size=2, lr=1e-3, seed=3),
          tmp_path / "const", device="cpu", progress=False, init_from=tmp_path / "init.safetensors")
    assert not torch.equal(net_c.state_dict()["out.2.weight"], init_sd["out.2.weight"])  # zero-init layer moved
    # a file for another architecture is refused before anything trains
    from safetensors.torch import save_file

    save_file({"input_blocks.0.0.weight": torch.zeros(3, 1, 3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointMismatchError):
        train(ADMUNet(**TINY), CropSampler(_images(), 16), cfg, tmp_path / "bad", device="cpu", progress=False,
              init_from=tmp_path / "bad.safetensors")


def test_staged_run_resumes_bit_exact(tmp_path):
    """init + cosine schedule + warm-up + no EMA warm-up: stopped after step 1 (wall limit 0 s) and
    resumed, the run equals 12 uninterrupted steps bit for bit."""
    _init_file(tmp_path / "init.safetensors")
    cfg = TrainConfig(steps=12, batch_size=2, lr=1e-3, lr_schedule="cosine", lr_min=1e-4, warmup_steps=3,
                      ema_warmup=False, ema_decay=0.9, checkpoint_every=6, seed=1)

    def run(out, **kw):
        torch.manual_seed(0)
        net = ADMUNet(**TINY)
        return net, train(net, CropSampler(_images(), 16), cfg, out, device="cpu", progress=False,
                          init_from=tmp_path / "init.safetensors", **kw)

    net12, res12 = run(tmp_path / "a")
    run(tmp_path / "b", max_wall_s=0.0)
    assert latest_checkpoint(tmp_path / "b").name == "ckpt-00000001"
    net_b, res_b = run(tmp_path / "b")
    assert res_b["step"] == 12
    for k, v in net12.state_dict().items():
        assert torch.equal(v, net_b.state_dict()[k]), k
        assert torch.equal(res12["ema"][k], res_b["ema"][k]), k
