"""Every Triton kernel compiled for real GPUs (sm_80, sm_90) on this GPU-less machine, through the
real launchers (`python -m elmo_fast.triton_check`): the interpreter, which runs the kernels in CI,
compiles nothing, so this is what catches a kernel that a GPU's compiler rejects, that spills
registers, or that asks for more shared memory than the SM has."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _kernel_names() -> set[str]:
    """Names of the @triton.jit kernels defined in the Triton modules (read from source, so this
    works whether or not the interpreter is on in this process)."""
    names = set()
    for mod in ("char_cnn", "highway", "lstm_proj"):
        path = os.path.join(ROOT, "elmo_fast", "ops", mod, "triton_impl.py")
        lines = open(path).read().splitlines()
        for i, line in enumerate(lines[:-1]):
            if line.strip() == "@triton.jit" and lines[i + 1].startswith("def _") and "_kernel" in lines[i + 1]:
                names.add(lines[i + 1].split("(")[0][4:])
    return names


def test_every_triton_kernel_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    report = tmp_path / "report.json"
    res = subprocess.run([sys.executable, "-m", "elmo_fast.triton_check", "--arch", "80", "90", "--json", str(report)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"triton_check failed:\n{res.stdout[-6000:]}\n{res.stderr[-4000:]}"
    rows = json.loads(report.read_text())
    for arch in (80, 90):
        compiled = {r["kernel"] for r in rows if r["arch"] == arch}
        missing = _kernel_names() - compiled
        assert not missing, f"sm_{arch}: kernels never compiled by triton_check (add a case for them): {sorted(missing)}"
    assert all(not r["problems"] for r in rows)
