"""The benchmark scripts run end to end on the CPU and print their tables (bench_hf: tiny shapes, eager and
compiled cells, both families; bench_mixed_steps: its grid): smoke tests that keep the scripts working, not speed
checks (speeds are never asserted)."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("shapes,modes", [("tiny", ["eager-dynamic", "eager-static"]),
                                          ("tiny-qwen3", ["eager-dynamic", "compiled"])])
def test_bench_hf_prints_every_cell(shapes, modes):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_hf.py"), "--shapes", shapes, "--batch", "1", "2",
           "--modes", *modes, "--models", "hf", "infinilm", "--new-tokens", "4", "--repeats", "2", "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table = out.stdout.split("decode tok/s on cpu", 1)
    assert len(table) == 2, out.stdout[-2000:]
    lines = table[1].splitlines()
    assert len(lines[1].split()) == 2 * len(modes), lines[1]  # one column per mode x batch
    rows = {line.split()[0] for line in lines[2:] if line.split()[:1] in (["hf"], ["infinilm"])}
    assert rows == {"hf", "infinilm"}
    # Timings are noise-prone on a shared CPU: a cell may lack a valid round, never silently.
    assert "all cells measured" in out.stdout or "no valid round" in out.stdout


def test_bench_mixed_steps_prints_its_grid():
    """benchmarks/bench_mixed_steps.py on the CPU: plain vs padded static inputs, one row per (decodes, chunk)."""
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_mixed_steps.py"), "--decodes", "1", "3",
           "--chunks", "5", "600", "--context", "40", "--iters", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if line[:1] == " " or line[:1].isdigit()]
    rows = [r for r in rows if r and r[0].isdigit()]
    assert [(r[0], r[1]) for r in rows] == [("1", "5"), ("1", "600"), ("3", "5"), ("3", "600")], out.stdout
    assert [r[3] for r in rows] == ["16", "-", "16", "-"]  # padded token counts; over 512 tokens: none
    assert all(float(r[5]) > 0 and float(r[6]) > 0 for r in rows)
