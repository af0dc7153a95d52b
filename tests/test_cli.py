"""The command line: the built-in default model (generate, the no-argument demo, chat on stdin), usage errors."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run(args, stdin=None, timeout=600, env=ENV):
    return subprocess.run([sys.executable, "-m", "infinilm_torch"] + args, cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, msg", [
    (["--max-new-tokens", "0"], "argument --max-new-tokens/--max-tokens: must be >= 1, got 0"),
    (["--block-size", "0"], "argument --block-size: must be >= 1, got 0"),
    (["--prompt-ids", "1,2,x"], "argument --prompt-ids: expected comma-separated token ids (ints >= 0), got '1,2,x'"),
    (["--max-batch-size", "-1", "--cache", "paged"], "argument --max-batch-size: must be >= 1, got -1"),
    (["--temperature", "-1"], "argument --temperature: must be >= 0.0, got -1.0"),
    (["--model", "demo", "--prompt-ids", "1,999"], "prompt 0 token ids [999] are out of range [0, 100)"),
])
def test_value_errors_are_usage_errors(args, msg, tmp_path):
    r = run(["generate"] + args, timeout=300, env=dict(ENV, INFINILM_DEMO_DIR=str(tmp_path / "demo")))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "--- [" not in r.stdout
    assert r.stderr.strip().splitlines()[-1] == f"python -m infinilm_torch generate: error: {msg}"


def test_default_model_answers():
    r = run(["generate", "--prompt", "What is the capital of France?", "--temperature", "0", "--max-new-tokens", "16"])
    assert r.returncode == 0, r.stderr
    assert "SmolLM2-135M-Instruct" in r.stdout and "chat template" in r.stdout
    assert "The capital of France is Paris." in r.stdout and "tokens/s" in r.stdout
    assert "\r" not in r.stderr and "it/s" not in r.stderr  # no progress-bar fragments when piped


def test_no_arguments_uses_default_model():
    r = run(["--max-new-tokens", "24"])
    assert r.returncode == 0, r.stderr
    assert "SmolLM2-135M-Instruct" in r.stdout and r.stdout.count("--- [") == 3 and "tokens/s" in r.stdout
    assert "\r" not in r.stdout + r.stderr


def test_chat_reads_stdin_and_streams():
    r = run(["chat", "--temperature", "0", "--max-new-tokens", "16"],
            stdin="What is the capital of France?\n/reset\nWhat is 2 + 2?\n/exit\nnever read\n")
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stdout.splitlines() if x.strip()]
    assert "Paris" in lines[0] and len(lines) == 2, r.stdout
