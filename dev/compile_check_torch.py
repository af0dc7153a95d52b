"""Compile-only check of the extension's C++ sources against another torch release's headers (default: the newest).

Fetches that release's cp311 manylinux x86_64 wheel with `pip download --no-deps` (past any local pip
constraint), keeps only its include/ tree (plus cpp_extension.py, to read the C++ standard that release asks
for) under ~/.cache/infinilm_torch, then runs the compiler with -fsyntax-only on every csrc .cpp with the flags
setup.py passes plus the ones cpp_extension adds. With a CUDA toolkit present it also checks the CUDA-side C++
(-DINFINILM_WITH_CUDA=1) and, with --cu, the .cu sources (nvcc -c for one architecture, through ccache).

    python dev/compile_check_torch.py                 # newest torch on PyPI
    python dev/compile_check_torch.py --torch 2.11.0  # a given release
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("INFINILM_CACHE", Path.home() / ".cache" / "infinilm_torch"))
FALLBACK_NEWEST = "2.15.0"  # used only when the index cannot be asked
KEEP = ("torch/include/", "torch/utils/cpp_extension.py", "torch/version.py")


def _pip_env():
    # The machine may cap torch through a pip constraint file; this check wants exactly the named release.
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PIP_CONSTRAINT", None)
    return env


def newest_torch() -> str:
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "torch"], env=_pip_env(),
                             capture_output=True, text=True, timeout=120).stdout
        m = re.search(r"^torch \(([0-9][^)]*)\)", out, re.M)
        if m:
            return m.group(1)
    except (OSError, subprocess.TimeoutExpired):
        pass
    print(f"compile-check: could not ask the index for torch's newest release; using {FALLBACK_NEWEST}")
    return FALLBACK_NEWEST


def fetch_headers(version: str) -> Path:
    """The unpacked torch tree (include/, cpp_extension.py) for `version`, downloaded once and cached."""
    dest = CACHE / f"torch-{version}-cp311-manylinux_x86_64"
    if (dest / ".complete").exists():
        return dest / "torch"
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        t0 = time.time()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", f"torch=={version}",
               "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
               "--platform", "manylinux_2_28_x86_64", "-d", tmp, "-q"]
        subprocess.run(cmd, env=_pip_env(), check=True)
        wheel = next(Path(tmp).glob("torch-*.whl"))
        t1 = time.time()
        staged = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel) as z:
            z.extractall(staged, [n for n in z.namelist() if n.startswith(KEEP)])
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)
        (dest / ".complete").write_text(wheel.name + "\n")
        print(f"compile-check: fetched {wheel.name} ({wheel.stat().st_size / 2**20:.0f} MiB) in {t1 - t0:.1f} s, "
              f"unpacked include/ in {time.time() - t1:.1f} s -> {dest}")
    return dest / "torch"


def cxx_standard(torch_dir: Path) -> str:
    """The -std flag that release's cpp_extension adds when the extension passes none (as setup.py does)."""
    text = (torch_dir / "utils" / "cpp_extension.py").read_text()
    m = re.search(r"cpp_flag_prefix \+ '(c\+\+\d+)'", text)
    if not m:
        raise SystemExit("compile-check: cannot find the default C++ standard in cpp_extension.py")
    return "-std=" + m.group(1)


def setup_flags() -> dict:
    out = subprocess.run([sys.executable, "setup.py"], cwd=ROOT, env=dict(os.environ, INFINILM_PRINT_BUILD_FLAGS="1"),
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def cuda_home():
    """CUDA_HOME, else /usr/local/cuda, else the toolkit above `nvcc` on PATH (as cpp_extension looks)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if shutil.which("nvcc"):
        candidates.append(str(Path(shutil.which("nvcc")).resolve().parent.parent))
    for home in filter(None, candidates):
        if (Path(home) / "include" / "cuda_runtime_api.h").exists() and (Path(home) / "bin" / "nvcc").exists():
            return home
    return None


def _run(job):
    name, cmd = job
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return name, r.returncode, r.stdout + r.stderr, time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch", help="torch release to check against (default: the newest on the index)")
    ap.add_argument("--cu", action="store_true", help="also nvcc-compile the .cu sources (sm_90; slow on first run)")
    ap.add_argument("-j", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", default="", help="check only the translation units whose label contains this")
    args = ap.parse_args()
    t_start = time.time()
    version = args.torch or os.environ.get("INFINILM_CHECK_TORCH") or newest_torch()
    torch_dir = fetch_headers(version)
    std = cxx_standard(torch_dir)
    flags = setup_flags()
    inc = torch_dir / "include"
    common = [f"-I{d}" for d in flags["include_dirs"]] + [
        f"-I{inc}", f"-I{inc / 'torch' / 'csrc' / 'api' / 'include'}", f"-I{sysconfig.get_paths()['include']}",
        "-fPIC", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_infinilm", "-D_GLIBCXX_USE_CXX11_ABI=1"]
    cxx = os.environ.get("CXX", "c++")
    jobs = [(f"{src} (cpu)", [cxx, *common, *flags["cxx"], std, "-fsyntax-only", src]) for src in flags["sources"]]
    cuda = cuda_home()
    if cuda:
        # The .cpp files that hold CUDA-only code behind INFINILM_WITH_CUDA, as the CUDA build compiles them.
        for src in flags["sources"]:
            if "INFINILM_WITH_CUDA" in (ROOT / src).read_text():
                jobs.append((f"{src} (cuda)", [cxx, *common, f"-I{cuda}/include", "-DINFINILM_WITH_CUDA=1",
                                               *flags["cxx"], std, "-fsyntax-only", src]))
        if args.cu:
            objdir = CACHE / "cu_objs"
            objdir.mkdir(parents=True, exist_ok=True)
            nvcc = [*(["ccache"] if shutil.which("ccache") else []), f"{cuda}/bin/nvcc"]
            for src in flags["cuda_sources"]:
                jobs.append((f"{src} (nvcc)", [*nvcc, *common, f"-I{cuda}/include", "-DINFINILM_WITH_CUDA=1", std,
                                               "--expt-relaxed-constexpr", "-gencode=arch=compute_90,code=sm_90",
                                               "-Xcompiler", "-fPIC", "-c", src, "-o",
                                               str(objdir / (Path(src).stem + ".o"))]))
    jobs = [j for j in jobs if args.only in j[0]]
    print(f"compile-check: {len(jobs)} translation units against torch {version} headers ({std}, "
          f"CUDA side: {'yes' if cuda else 'no toolkit'})")
    failed = []
    with ThreadPoolExecutor(max(1, args.j)) as pool:
        for name, rc, out, dt in pool.map(_run, jobs):
            if rc != 0:
                failed.append(name)
                print(f"FAILED {name} ({dt:.1f} s)\n{out[-6000:]}")
    if failed:
        raise SystemExit(f"compile-check: {len(failed)} of {len(jobs)} failed against torch {version}: {failed}")
    print(f"compile-check: all {len(jobs)} compile against torch {version} ({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
