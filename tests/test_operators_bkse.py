"""KernelWizard (bkse) state dict against the manifest, checkpoint round trip, missing-weights error."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

import operators as O
from operators.bkse import WEIGHTS_ENV, KernelWizard, MissingWeightsError, state_dict_keys_sha256

torch.set_num_threads(1)
MANIFEST = Path(__file__).parent / "data" / "manifests" / "bkse_kernelwizard_gopro.json"  # see data/README.md


@pytest.fixture(scope="module")
def manifest():
    return json.loads(MANIFEST.read_text())


def test_state_dict_matches_manifest_key_for_key(manifest):
    with torch.device("meta"):  # shapes only, no memory
        wizard = KernelWizard()
    sd = wizard.state_dict()
    ours = [(k, list(v.shape)) for k, v in sd.items()]
    assert ours == [(k, list(s)) for k, s in manifest["parameters"]]  # names, shapes and order
    assert len(sd) == manifest["num_tensors"]
    assert sum(v.numel() for v in sd.values()) == manifest["num_parameters"]
    for sub, n in manifest["parameters_per_submodule"].items():
        assert sum(p.numel() for p in getattr(wizard, sub).parameters()) == n
    assert [k for k, _ in wizard.named_parameters()] == list(sd)  # no buffers
    assert state_dict_keys_sha256(sd) == manifest["keys_sha256"]


def test_random_checkpoint_round_trip_and_env_var(tmp_path, monkeypatch):
    torch.manual_seed(0)
    wizard = KernelWizard()
    path = tmp_path / "GOPRO_wVAE.pth"
    torch.save({f"module.{k}": v for k, v in wizard.state_dict().items()}, path)  # DataParallel-style prefix
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    op = O.get_operator("nonlinear_blur")  # finds the file through the environment variable
    for (k, a), (k2, b) in zip(wizard.state_dict().items(), op.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1
    direct = O.NonlinearBlur(model=wizard)
    with torch.no_grad():
        assert torch.equal(op(x), direct(x))
    assert not any(p.requires_grad for p in op.parameters())


def test_missing_weights_error_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(MissingWeightsError) as err:
        O.get_operator("nonlinear_blur")
    msg = str(err.value)
    assert "GOPRO_wVAE.pth" in msg and WEIGHTS_ENV in msg and "weights=" in msg
    with pytest.raises(MissingWeightsError, match="does not exist"):
        O.get_operator("nonlinear_blur", weights=tmp_path / "nowhere.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"feature_extractor.0.weight": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        KernelWizard.from_checkpoint(path)
