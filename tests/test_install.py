"""pip-install tests: a fresh venv builds the package with `pip install --no-build-isolation .` against the torch
it runs with, imports it and runs an op; the build record refuses another torch at import; isolated builds stop
at once with the command to type instead.

The fresh venv sees this venv's packages (torch included) through a .pth file instead of reinstalling them, and
the compile goes through ccache with the same relative paths as `make build`, so it is mostly cache hits.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HINT = "pip install --no-build-isolation ."


def _copy_source(dest: Path) -> Path:
    """The checkout's files as a fresh clone would have them (tracked and untracked-but-not-ignored)."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _fresh_venv(path: Path, src: Path) -> Path:
    """A new venv that sees this venv's packages (torch, pip, setuptools, ninja...) after its own.

    They are reached through `src/.venv`, a link to this venv, so that the torch include paths of the compile
    commands lie under the ccache base dir exactly as in a checkout's in-place build (cache hits).
    """
    link = src / ".venv"
    if not link.exists():
        link.symlink_to(Path(sys.prefix))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    py = path / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    shared = Path(sysconfig.get_paths()["purelib"]).relative_to(sys.prefix)
    Path(purelib, "_shared_venv.pth").write_text(f"{link / shared}\n")
    return py


def _build_env(src: Path) -> dict:
    env = dict(os.environ, CCACHE_BASEDIR=str(src), CCACHE_NOHASHDIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    if Path("/usr/lib/ccache/g++").exists():
        env["PATH"] = "/usr/lib/ccache:" + env["PATH"]
    env.pop("PYTHONPATH", None)  # the installed package must be the one imported, not the checkout
    return env


def _run(cmd, cwd, env, timeout):
    t0 = time.time()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return r, time.time() - t0


def test_check_build_messages():
    """The import-time rules, for variants this machine's torch cannot show (e.g. a CUDA torch)."""
    from infinilm_torch.lib import check_build

    cpu = {"torch_version": "2.13.0+cpu", "torch_cuda": None, "with_cuda": False}
    cuda = {"torch_version": "2.13.0+cu130", "torch_cuda": "13.0", "with_cuda": True}
    assert check_build(cpu, "2.13.0+cpu", None) == (None, None)
    assert check_build(cuda, "2.13.0+cu130", "13.0") == (None, None)
    assert check_build(cuda, "2.13.0+cu132", "13.2") == (None, None)  # same release, same CUDA major
    err, _ = check_build(cpu, "2.15.0+cpu", None)
    assert "built against torch 2.13.0+cpu" in err and "2.15.0+cpu is imported" in err and "--no-build-isolation" in err
    err, _ = check_build(cuda, "2.13.0+cpu", None)
    assert "CUDA kernels" in err and "CPU-only build" in err and "INFINILM_CUDA=0" in err
    err, _ = check_build(cuda, "2.13.0+cu126", "12.6")
    assert "built for CUDA 13.0" in err and "uses CUDA 12.6" in err
    err, warn = check_build(cpu, "2.13.0+cu130", "13.0")
    assert err is None and "without CUDA kernels" in warn and "INFINILM_CUDA=1" in warn


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the package installed by `pip install --no-build-isolation .` from a copy of the tree."""
    tmp = tmp_path_factory.mktemp("install")
    src = _copy_source(tmp / "src")
    py = _fresh_venv(tmp / "venv", src)
    env = _build_env(src)
    r, dt = _run([str(py), "-m", "pip", "install", "--no-build-isolation", "."], src, env, timeout=1800)
    assert r.returncode == 0, f"pip install --no-build-isolation . failed ({dt:.0f} s):\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
    print(f"pip install --no-build-isolation . took {dt:.0f} s")
    return py, tmp, env


def _python(py, tmp, env, code):
    return _run([str(py), "-c", code], tmp, env, timeout=300)[0]


@pytest.mark.slow
def test_installed_package_imports_and_runs_an_op(installed):
    py, tmp, env = installed
    r = _python(py, tmp, env, """
import sys, torch, infinilm_torch
from infinilm_torch import ops
from infinilm_torch.lib import BUILD_INFO
assert infinilm_torch.__file__.startswith(sys.prefix), (infinilm_torch.__file__, sys.prefix)
assert BUILD_INFO["torch_version"] == torch.__version__, (BUILD_INFO, torch.__version__)
assert BUILD_INFO["with_cuda"] == False or torch.version.cuda is not None, BUILD_INFO
x = torch.randn(7, 96, dtype=torch.float32)
w = torch.randn(96, dtype=torch.float32)
ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), ref, rtol=1e-5, atol=1e-5)
print("ok", torch.__version__)
""")
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def _installed_build_info(py, tmp, env) -> Path:
    r = _python(py, tmp, env, "import importlib.util as u; print(u.find_spec('infinilm_torch.lib._build_info').origin)")
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip())


@pytest.mark.slow
@pytest.mark.parametrize("field,value,message", [
    ("TORCH_VERSION", "'2.99.0+cpu'", "built against torch 2.99.0+cpu"),
    ("WITH_CUDA", "True", "is a CPU-only build"),
])
def test_installed_package_refuses_another_torch(installed, field, value, message):
    """A record that does not match the running torch stops the import with a message, before the .so loads."""
    import torch

    if field == "WITH_CUDA" and torch.version.cuda is not None:
        pytest.skip("the running torch is a CUDA build: a record of a CUDA build is valid here")
    py, tmp, env = installed
    info = _installed_build_info(py, tmp, env)
    original = info.read_text()
    lines = [f"{field} = {value}" if line.startswith(f"{field} = ") else line for line in original.splitlines()]
    if field == "WITH_CUDA":
        lines = ["TORCH_CUDA = '13.0'" if line.startswith("TORCH_CUDA = ") else line for line in lines]
    try:
        info.write_text("\n".join(lines) + "\n")
        r = _python(py, tmp, env, "import infinilm_torch")
    finally:
        info.write_text(original)
    assert r.returncode != 0, "import succeeded with a mismatched build record"
    assert "ImportError" in r.stderr and message in r.stderr, r.stderr[-3000:]
    assert "rebuild" in r.stderr.lower() and "undefined symbol" not in r.stderr, r.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [
    ["-m", "pip", "install", "."],
    ["-m", "pip", "install", "-e", "."],
    ["-m", "build", "--wheel", "--outdir", "dist", "."],
])
def test_isolated_build_stops_at_once(tmp_path, cmd):
    """pip's default isolated build has no torch: setup.py must stop before compiling, naming the command to use."""
    src = _copy_source(tmp_path / "src")
    py = _fresh_venv(tmp_path / "venv", src)
    r, dt = _run([str(py), *cmd], src, _build_env(src), timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert HINT in out and "no torch in this build environment" in out, out[-4000:]
    assert dt < 120, f"took {dt:.0f} s to stop"
    built = [p for d in ("build", "infinilm_torch") if (src / d).exists() for p in (src / d).rglob("*.[os]*")
             if p.suffix in (".o", ".so")]
    assert not built, f"it compiled something: {built}"


def test_sm90a_macro_only_where_sm90_devices_run_sm90a_code():
    """INFINILM_SM90A (the wgmma kernels are in the device code) only when an sm_90 device cannot load a plain
    sm_90 image instead: 9.0a listed, 9.0 not."""
    ns = {"__file__": str(ROOT / "setup.py")}
    src = open(ns["__file__"], encoding="utf-8").read()
    exec(compile(src.split("\ndef main():")[0], "setup.py", "exec"), ns)
    flags = ns["nvcc_flags"]
    on = {a: "-DINFINILM_SM90A" in flags(a) for a in ("9.0", "9.0a", "8.0;9.0a", "9.0;9.0a", "8.0 9.0a+PTX", "8.0;8.6;8.9;9.0")}
    assert on == {"9.0": False, "9.0a": True, "8.0;9.0a": True, "9.0;9.0a": False, "8.0 9.0a+PTX": True,
                  "8.0;8.6;8.9;9.0": False}
