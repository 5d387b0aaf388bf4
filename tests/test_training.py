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
    assert torch.equal(prior.eps(x, 100), ema_net(x, torch.tensor([100, 100]))[:, :1])


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
