"""benchmarks/gpu.py on a machine without CUDA: one line and exit 0; its network part runs on CPU
(fp32 and bf16 autocast) and measures what it says (ε̂ differences against fp32)."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_without_cuda_it_prints_one_line_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device visible, whatever the machine has
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], r.stdout


def test_psnr_against_the_reference_is_the_textbook_value():
    gpu = _module()
    ref = torch.linspace(-1, 1, 1000, dtype=torch.float64)
    x = ref + 0.01 * (1 - 2 * (torch.arange(1000, dtype=torch.float64) % 2))  # ±0.01: mse 1e-4, peak 2
    assert gpu.psnr_against(x, ref) == pytest.approx(10 * math.log10(4 / 1e-4), abs=1e-9)
    assert gpu.psnr_against(ref, ref) == math.inf


def test_network_part_on_cpu_fp32_and_bf16_autocast(capsys):
    gpu = _module()
    rows = gpu.network_part(torch.device("cpu"), batch=2, size=32, seconds=0.0, compile_net=False)
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"fp32", "bf16 autocast"}  # CUDA graphs, fp16 and compile are CUDA-only variants
    assert by["fp32"]["rel_rms"] == 0 and by["fp32"]["speedup"] == 1 and by["fp32"]["psnr_vs_fp32"] == math.inf
    # bf16 keeps 8 mantissa bits: ε̂ differs from fp32 at the percent level, not more, and not zero
    assert 1e-4 < by["bf16 autocast"]["rel_rms"] < 0.1, by["bf16 autocast"]
    assert 20 < by["bf16 autocast"]["psnr_vs_fp32"] < 80 and by["bf16 autocast"]["img_per_s"] > 0
    gpu.print_network(rows, 2, 32)
    out = capsys.readouterr().out
    assert "bf16 autocast" in out and "PSNR vs fp32" in out
