"""ADM UNet layout, conventions and checkpoint loading (ddiff.priors.adm / ddiff.priors.loading)."""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddiff.priors import ADMConfig, ADMPrior, ADMUNet, CheckpointMismatchError, UnsafeCheckpointError, load_prior
from ddiff.priors.adm import AttentionBlock, timestep_embedding
from ddiff.priors.loading import infer_config

MANIFESTS = Path(__file__).parent / "data" / "manifests"  # vendored listings, provenance in data/README.md

# tiny guided-diffusion-style config (32 groups, 64-channel heads as in the public models)
TINY = dict(in_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(2,),
            num_head_channels=64, learn_sigma=True)


def keys_sha256(sd) -> str:
    """The manifests' ``keys_sha256_method``: one 'name:d1,d2,...' line per entry, '\\n'-joined."""
    lines = "\n".join(k + ":" + ",".join(str(d) for d in v.shape) for k, v in sd.items())
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


@pytest.mark.parametrize("preset,manifest", [("adm-ffhq256", "adm_ffhq256.json"),
                                             ("adm-imagenet256", "adm_imagenet256_uncond.json")])
def test_state_dict_matches_manifest(preset, manifest):
    m = json.loads((MANIFESTS / manifest).read_text())
    with torch.device("meta"):  # no memory, no init cost
        net = ADMUNet.from_preset(preset)
    sd = net.state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(k, list(s)) for k, s in m["parameters"]]
    assert keys_sha256(sd) == m["keys_sha256"]
    assert len(sd) == m["num_tensors"]
    assert sum(v.numel() for v in sd.values()) == m["num_parameters"]
    assert net.config.out_channels == m["output_channels"]


def test_timestep_embedding_is_cosine_first():
    t = torch.tensor([0.0, 7.0, 999.0, 12.5])
    emb = timestep_embedding(t, 8)
    half = 4
    freqs = [math.exp(-math.log(10000) * i / half) for i in range(half)]
    expect = torch.tensor([[math.cos(tt * f) for f in freqs] + [math.sin(tt * f) for f in freqs] for tt in t.tolist()])
    torch.testing.assert_close(emb, expect, rtol=1e-5, atol=1e-5)


def test_attention_uses_legacy_head_major_qkv_layout():
    """Compare with an explicit per-head computation on the [q_h | k_h | v_h] channel blocks."""
    torch.manual_seed(0)
    blk = AttentionBlock(64, num_heads=4, num_head_channels=32, groups=32)
    torch.nn.init.normal_(blk.proj_out.weight)
    x = torch.randn(2, 64, 3, 5)
    out = blk(x)
    xf = x.reshape(2, 64, -1)
    qkv = blk.qkv(blk.norm(xf))  # (B, 192, T)
    heads = []
    for h in range(2):  # 64 / 32 = 2 heads
        blockh = qkv[:, h * 96:(h + 1) * 96]
        q, k, v = blockh[:, :32], blockh[:, 32:64], blockh[:, 64:]
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(32), dim=-1)
        heads.append(torch.einsum("bts,bcs->bct", w, v))
    ref = (xf + blk.proj_out(torch.cat(heads, dim=1))).reshape_as(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_forward_shapes_prior_adapter_and_tile_check():
    torch.manual_seed(0)
    net = ADMUNet.from_preset("compact", in_channels=2)
    with torch.no_grad():  # zero-init layers would hide the timestep's effect
        for p in net.parameters():
            p.normal_(0, 0.05)
    prior = ADMPrior(net)
    x = torch.randn(2, 2, 24, 40)  # any tile divisible by 8
    e = prior.eps(x, 500)
    assert e.shape == x.shape and e.abs().sum() > 0
    torch.testing.assert_close(prior.eps(x, torch.tensor([10.0, 10.0])), prior.eps(x, 10))
    assert not torch.allclose(prior.eps(x, 10.5), prior.eps(x, 10))  # fractional t is used
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(1, 2, 30, 32), torch.tensor([3]))
    with pytest.raises(ValueError, match="channel"):
        prior.eps(torch.randn(1, 3, 24, 24), 3)
    # learn_sigma: eps is the first C of 2C outputs
    net2 = ADMUNet(ADMConfig(**TINY))
    torch.nn.init.normal_(net2.out[2].weight)
    x3 = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(ADMPrior(net2).eps(x3, 5), net2(x3, torch.tensor([5]))[:, :3])


def _tiny_random():
    torch.manual_seed(1)
    net = ADMUNet(ADMConfig(**TINY))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)  # no zero-init layers: a real test of every tensor
    return net


def test_guided_diffusion_pt_round_trip_bit_exact(tmp_path):
    net = _tiny_random()
    sd = {k: v.clone() for k, v in net.state_dict().items()}  # plain state_dict, no prefix, fp32
    torch.save(sd, tmp_path / "model.pt")
    prior = load_prior(tmp_path / "model.pt")  # preset inferred from shapes
    assert prior.config.to_dict() == net.config.to_dict()
    for k, v in prior.net.state_dict().items():
        assert torch.equal(v, sd[k]), k
    x = torch.randn(2, 3, 16, 16)
    # the loaded prior runs channels-last on CPU (another convolution order: equal to float rounding)
    torch.testing.assert_close(prior.eps(x, 321), net(x, torch.tensor([321, 321]))[:, :3], rtol=0, atol=1e-5)
    # safetensors + explicit preset dict; bf16 option
    save_file(sd, str(tmp_path / "model.safetensors"))
    p2 = load_prior(tmp_path / "model.safetensors", preset=dict(TINY), dtype="bf16")
    assert all(v.dtype == torch.bfloat16 for v in p2.net.state_dict().values())
    assert p2.eps(x, 3).dtype == torch.float32  # output follows the input dtype


def test_inference_picks_named_preset_from_shapes():
    with torch.device("meta"):
        sd = ADMUNet.from_preset("adm-ffhq256").state_dict()
    cfg = infer_config(sd)
    assert cfg.model_channels == 128 and cfg.channel_mult == (1, 1, 2, 2, 4, 4) and cfg.attention_ds == (16,)


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_prior(tmp_path / "evil.pt")
    assert not marker.exists()


def test_mismatched_keys_give_readable_report(tmp_path):
    sd = {k: v.clone() for k, v in _tiny_random().state_dict().items()}
    sd.pop("out.0.bias")
    sd["extra.weight"] = torch.zeros(3)
    sd["time_embed.0.weight"] = torch.zeros(7, 32)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as ei:
        load_prior(tmp_path / "bad.pt", preset=dict(TINY))
    msg = str(ei.value)
    assert "missing from the checkpoint (1)" in msg and "out.0.bias" in msg
    assert "unexpected in the checkpoint (1)" in msg and "extra.weight" in msg
    assert "time_embed.0.weight: [7, 32] vs [128, 32]" in msg
    assert ei.value.missing == ["out.0.bias"]


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_prior(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="dtype"):
        load_prior(tmp_path / "nope.pt", dtype="int8")
    with pytest.raises(ValueError, match="unknown ADM preset"):
        ADMUNet.from_preset("adm-nope")
    with pytest.raises(ValueError, match="divisible by norm_groups"):
        ADMConfig(model_channels=24, norm_groups=32)


def test_default_prior_loads_if_shipped():
    from ddiff.priors.loading import DEFAULT_WEIGHTS

    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("default prior weights not shipped yet")
    prior = load_prior("default")
    assert prior.channels == 1
    assert DEFAULT_WEIGHTS.stat().st_size <= 25 * 2**20
    e = prior.eps(torch.zeros(1, 1, 64, 64), 500)
    assert e.shape == (1, 1, 64, 64) and torch.isfinite(e).all()


@pytest.mark.parametrize("mode", ["down", "up", "plain"])
def test_resblock_scale_shift_and_resampling(mode):
    """h = GN(h)(1 + scale) + shift with (scale, shift) in that order; resampling after GN+SiLU."""
    import torch.nn.functional as F

    from ddiff.priors.adm import ResBlock

    torch.manual_seed(0)
    blk = ResBlock(32, 16, 64, groups=32, up=mode == "up", down=mode == "down")
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.2)
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    rs = {"down": lambda z: F.avg_pool2d(z, 2), "up": lambda z: F.interpolate(z, scale_factor=2),
          "plain": lambda z: z}[mode]
    h = blk.in_layers[2](rs(F.silu(F.group_norm(x, 32, blk.in_layers[0].weight, blk.in_layers[0].bias))))
    e = blk.emb_layers[1](F.silu(emb))[:, :, None, None]
    scale, shift = e[:, :64], e[:, 64:]
    h = F.group_norm(h, 32, blk.out_layers[0].weight, blk.out_layers[0].bias) * (1 + scale) + shift
    h = blk.out_layers[3](F.silu(h))
    torch.testing.assert_close(blk(x, emb), blk.skip_connection(rs(x)) + h, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the inference path (activations in place) computes the same, and leaves x alone
        x0 = x.clone()
        torch.testing.assert_close(blk(x, emb), blk.skip_connection(rs(x)) + h, rtol=1e-5, atol=1e-5)
        assert torch.equal(x, x0)


def test_inference_forward_equals_the_float32_reference():
    """The embedded prior as load_prior gives it on CPU (channels-last, in-place activations, fused
    attention) against the same weights run as the reference: contiguous NCHW, autograd on (the
    out-of-place path). Tolerance 1e-5 on ε̂ (unit scale; measured 4e-6 at batch 4, 64²): float
    rounding of another summation order, nothing more. Gradients still flow (DPS, training)."""
    fast = load_prior("default")
    ref = ADMUNet(fast.config)
    ref.load_state_dict(fast.net.state_dict())
    assert fast.net.channels_last and not ref.channels_last
    g = torch.Generator().manual_seed(0)
    for shape, t in (((4, 1, 64, 64), 500.0), ((3, 1, 48, 40), 37.5)):
        x = torch.randn(*shape, generator=g)
        tt = torch.full((shape[0],), t)
        with torch.no_grad():
            got = fast.eps(x, tt)
        want = ref(x.requires_grad_(True), tt)
        assert got.is_contiguous() and got.shape == x.shape
        torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-5)
    want.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
