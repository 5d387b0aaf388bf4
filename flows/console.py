"""Console helpers shared by the ``ddiff`` command line (:mod:`flows.cli`) and ``ddiff demo``
(:mod:`flows.demo`): ``K=V`` option parsing, the solver options, rich progress bars and spinners.

Room: ``flows`` — json, threading, rich (imported when a bar or spinner starts); no torch, no
prefect, nothing else from ``flows``. It exists so that the import graph is a line:
``flows.cli`` -> ``flows.demo`` -> ``flows.console``, and nothing imports ``flows.cli`` (the
``ddiff`` entry point aside). The names keep their leading underscore: they are the command
line's internals, not API (``flows.cli`` re-exports them under the same names).
"""
from __future__ import annotations

import json
import re
import threading

#: Python keyword spellings in messages -> the command line's flags (one table, used by cli_spelling)
_CLI_SPELLINGS = [
    (r"\boverwrite=True\b", "--overwrite"),
    (r"\bnonfinite='(\w+)'", r"--nonfinite \1"),
    (r"\baxes='([a-z]*)'(?:-style)?", r"--axes \1"),
    (r"\bintensity='(\w+)'", r"--intensity \1"),
    (r"\bnoise\.sigma\b", "--sigma"),
    (r"\bnoise\.gain\b", "--gain"),
    (r"\bnoise\.offset\b", "--offset"),
    (r"\bnoise\.read_noise\b", "--read-noise"),
    (r"\bsaturation=(?:'([^']*)'|([-+\w.]+))", r"--saturation \1\2"),
    (r"\bbad_pixels file\b", "--bad-pixels file"),
    (r"\bmask file\b", "--mask file"),
    (r"\bbrick_z=(\d+)", r"--brick-z \1"),
    (r"\boverlap_z=(\d+)", r"--overlap-z \1"),
    (r"\bbrick_z\b", "--brick-z"),
    (r"\boverlap_z\b", "--overlap-z"),
    (r"\bsolver\.seeds\b", "--seeds"),
    (r"\bmax_size=(?:'([^']*)'|(\S*\w))", r"--max-size \1\2"),
    (r"\bmax_size= ", "--max-size "),
    (r" \(storage\.\w+\)", ""),
    (r"\bexecution\.device='([^']*)'", r"--device \1"),
    (r"\bexecution\.device\b", "--device"),
    (r"\bexecution\.torch_threads\b", "--threads"),
    (r"\boperator\.params (\w+)=", r"--op-param \1="),
    (r"\boperator\.params\b", "--op-param"),
    (r"\bsolver\.hyperparameters (\w+)=", r"--hp \1="),
    (r"\bsolver\.hyperparameters\b", "--hp"),
    (r"\bexecution\.batch_size\b", "--batch-size"),
    (r"\bexecution\.max_workers\b", "--workers"),
    (r"\bexecution\.dask_workers\b", "--dask-workers"),
    (r"\bsolver\.steps\b", "--steps"),
    (r"\boverlap=(\d+)", r"--overlap \1"),
    (r"\btile=(\d+)", r"--tile \1"),
    (r"\bprior='([^']*)'", r"--prior \1"),
]


def cli_spelling(text: str) -> str:
    """A message written with the Python keyword names (``overwrite=True``, ``noise.sigma``,
    ``operator.params k=v``) re-spelled with the command line's flags (``--overwrite``, ``--sigma``,
    ``--op-param k=v``), so each interface speaks its own language."""
    for pat, rep in _CLI_SPELLINGS:
        text = re.sub(pat, rep, text)
    return text


def _kv(items: list[str] | None, what: str) -> dict:
    """``["k=v", ...]`` -> dict, values parsed as JSON when possible (numbers, lists, true/false)."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"{what} {it!r} must look like key=value")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _solver_options(a) -> dict:
    """``SolverSpec`` keywords from ``--solver``, ``--steps`` and ``--hp`` (``K=V`` overrides, or
    the bare word ``auto`` / ``paper`` choosing the settings)."""
    words = [h for h in a.hp or [] if "=" not in h]
    bad = [w for w in words if w not in ("auto", "paper")]
    if bad or len(words) > 1:
        raise ValueError(f"--hp {(bad or words)[0]!r}: give --hp auto, --hp paper (once) or --hp key=value")
    spec = {"name": a.solver, "steps": a.steps, "hyperparameters": _kv([h for h in a.hp or [] if "=" in h], "--hp")}
    if words:
        spec["settings"] = words[0]
    seeds = getattr(a, "seeds", 1)
    if seeds is not None and seeds < 1:  # 0 or negative is not "one seed": say so
        raise ValueError(f"--seeds {seeds}: give K >= 2 to solve each tile K times (their mean, and the seed spread "
                         "kept as uncertainty), or leave it out for one seed")
    if (seeds or 1) > 1:
        spec["seeds"] = seeds
    return spec


class _PollProgress:
    """A rich progress bar fed from a background thread by ``poll() -> (completed, total | None)``
    (it reads what the run has written to disk, so it works for local and Dask runs alike)."""

    def __init__(self, poll, label: str, enabled: bool = True):
        self.poll, self.label, self.enabled = poll, label, enabled
        self._stop = threading.Event()
        self._thread = None

    def _update(self, bar, task) -> None:
        try:
            done, total = self.poll()
            bar.update(task, total=total, completed=done)
        except Exception:  # noqa: BLE001 - nothing written yet
            pass

    def _run(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=False) as bar:
            task = bar.add_task(self.label, total=None)
            while not self._stop.is_set():
                self._update(bar, task)
                self._stop.wait(0.5)
            self._update(bar, task)

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _LedgerProgress(output: str, label: str, enabled: bool = True) -> _PollProgress:
    """Progress of a reconstruction: tiles solved in the output store's ledger."""

    def poll():
        import storage

        out = storage.open_output(output)
        return out.ledger.count("solved"), out.n_frames * out.plan.n_tiles

    return _PollProgress(poll, label, enabled)


def _BenchProgress(folder: str, label: str, enabled: bool = True) -> _PollProgress:
    """Progress of a benchmark: finished cells against the grid in its ``config.json``."""

    def poll():
        from pathlib import Path

        total = len(json.loads((Path(folder) / "config.json").read_text())["config"]["cells"])
        return len(list((Path(folder) / "cells").glob("*.json"))), total

    return _PollProgress(poll, label, enabled)


def _spinner(label: str, enabled: bool):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(label)


def _console():
    from rich.console import Console

    return Console()
