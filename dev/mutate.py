"""Mutation harness: plant each bug of dev/mutations.py in a scratch copy, rebuild, run its tests, tabulate catches.

    python dev/mutate.py                      # every mutation, each against its own test files
    python dev/mutate.py --only cpu_rope_neox_sign --all   # one mutation against the whole suite
    python dev/mutate.py --list               # names and files only

The scratch copy lives under <repo>/.dev/mutate/tree (git-ignored) and is kept between runs, so rebuilds are
incremental: ninja recompiles only what a mutation (or its restore) touched. With ccache on PATH the copy's
objects are cache hits of the repo's own build: the copy sits under the same ccache base_dir and reaches the
venv through its own `.venv` link, so every compile command has the same relative paths.
Before the mutations, the unmutated copy runs the union of their tests once (the baseline): a test that fails
there is reported and not counted as a catch.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NATIVE = (".cpp", ".h", ".cu", ".cuh", ".hpp", ".cc")


def load_mutations(path: Path) -> list[dict]:
    spec = importlib.util.spec_from_file_location("mutations", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for m in mod.MUTATIONS:
        missing = {"name", "file", "pattern", "replacement", "tests"} - set(m)
        if missing:
            raise ValueError(f"mutation {m.get('name', m)!r} lacks {sorted(missing)}")
    return mod.MUTATIONS


def apply(text: str, m: dict) -> str:
    """The mutated text; the pattern must occur exactly `count` times (default: at least once)."""
    pat = m["pattern"] if m.get("regex") else re.escape(m["pattern"])
    n = len(re.findall(pat, text))
    want = m.get("count")
    if n == 0 or (want is not None and n != want):
        raise ValueError(f"{m['name']}: pattern found {n} times in {m['file']}, expected {want or '>= 1'}")
    repl = m["replacement"] if m.get("regex") else m["replacement"].replace("\\", "\\\\")
    return re.sub(pat, repl, text)


def repo_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                         capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file() and not (root / f).is_symlink()]


def sync(root: Path, tree: Path) -> bool:
    """Mirror the repo's tracked and unignored files into tree (only changed ones: ninja keys on mtimes).
    Returns whether a native source changed."""
    tree.mkdir(parents=True, exist_ok=True)
    manifest = tree / ".mutate_manifest.json"
    old = set(json.loads(manifest.read_text())) if manifest.exists() else set()
    files = repo_files(root)
    native = False
    for f in files:
        src, dst = root / f, tree / f
        if dst.exists() and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        native |= f.endswith(NATIVE)
    for f in old - set(files):
        (tree / f).unlink(missing_ok=True)
        native |= f.endswith(NATIVE)
    manifest.write_text(json.dumps(sorted(files)))
    return native


def python_in(tree: Path, python: str) -> str:
    """The interpreter to use inside the copy: a venv inside the repo is reached through the copy's own
    `.venv` link, so the build's include paths are the same relative paths as the repo's."""
    venv = ROOT / ".venv"
    if python.startswith(str(venv) + os.sep):
        link = tree / ".venv"
        target = os.path.realpath(venv)
        if not link.is_symlink() or os.readlink(link) != target:
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target, target_is_directory=True)
        return str(link) + python[len(str(venv)):]
    return python


def build_env(python: str) -> dict:
    env = dict(os.environ)
    path = [os.path.dirname(python), env.get("PATH", "")]
    if os.path.isdir("/usr/lib/ccache"):
        path.insert(0, "/usr/lib/ccache")
    env["PATH"] = os.pathsep.join(path)
    env.setdefault("CCACHE_BASEDIR", str(ROOT))
    env.setdefault("CCACHE_NOHASHDIR", "1")
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    return env


def build(tree: Path, python: str) -> tuple[bool, float]:
    t0 = time.monotonic()
    log = tree / ".mutate_build.log"
    with open(log, "w") as f:
        rc = subprocess.run(["nice", "-n", "5", python, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree,
                            env=build_env(python), stdout=f, stderr=subprocess.STDOUT).returncode
    return rc == 0, time.monotonic() - t0


def run_tests(tree: Path, python: str, tests: list[str], seed: int, timeout: float, extra: list[str]) -> dict:
    """pytest over `tests` in the copy; returns {'failed': [...], 'run': n, 'skipped': n, 'timeout': bool}."""
    xml = tree / ".mutate_junit.xml"
    xml.unlink(missing_ok=True)
    env = dict(os.environ, INFINILM_TEST_SEED=str(seed), PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    cmd = ["nice", "-n", "5", python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
           *extra, *tests]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        timed_out, tail = False, proc.stdout[-3000:] + proc.stderr[-2000:]
    except subprocess.TimeoutExpired:
        timed_out, tail = True, ""
    res = dict(failed=[], run=0, skipped=0, timeout=timed_out, seconds=time.monotonic() - t0, tail=tail)
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('file') or case.get('classname', '').replace('.', '/') + '.py'}::{case.get('name')}"
            if case.find("skipped") is not None:
                res["skipped"] += 1
                continue
            res["run"] += 1
            if case.find("failure") is not None or case.find("error") is not None:
                res["failed"].append(name)
    return res


def short(name: str) -> str:
    return name.split("/")[-1].replace(".py::", "::")


def grouped(names: list[str]) -> list[str]:
    """Failing test ids grouped by test function: 'test_ops::test_rms_norm_eps x12'."""
    counts: dict[str, int] = {}
    for n in names:
        key = short(n).split("[")[0]
        counts[key] = counts.get(key, 0) + 1
    return [k if c == 1 else f"{k} x{c}" for k, c in counts.items()]


def table(rows: list[dict], max_names: int) -> str:
    lines = ["| mutation | file | result | failed / run | caught by |", "|---|---|---|---|---|"]
    for r in rows:
        names = grouped(r["caught"])
        shown = ", ".join(names[:max_names]) + (f", +{len(names) - max_names} more" if len(names) > max_names else "")
        lines.append(f"| {r['name']} | {r['file']} | {r['result']} | {len(r['caught'])} / {r['run']} | {shown} |")
    return "\n".join(lines)


def git_head() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return head.stdout.strip() + (" + uncommitted changes" if dirty else "")


def write_markdown(args, rows: list[dict]) -> None:
    head = args.synced_head
    scope = "the whole suite" if args.all else "each mutation's listed test files"
    base = "no baseline run" if args.no_baseline else "failures of the unmutated baseline not counted"
    args.markdown.write_text(f"# Mutation results\n\n`python dev/mutate.py{' --all' if args.all else ''}` at "
                             f"{head}, INFINILM_TEST_SEED={args.seed}, {scope}, {base}; "
                             f"{time.strftime('%Y-%m-%d %H:%M %Z')}.\n\n{table(rows, args.max_names)}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutations", type=Path, default=ROOT / "dev" / "mutations.py")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    ap.add_argument("--all", action="store_true", help="run the whole tests/ directory for every mutation")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--python", default=None,
                    help="interpreter with torch, pytest and the build deps (default: the repo's .venv, else this one)")
    ap.add_argument("--scratch", type=Path, default=ROOT / ".dev" / "mutate" / "tree", help="the scratch copy")
    ap.add_argument("--seed", type=int, default=4242, help="INFINILM_TEST_SEED for every run")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per pytest run (a timeout counts as caught)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    ap.add_argument("--markdown", type=Path, help="also write the table (with the run's settings) to this file")
    ap.add_argument("--max-names", type=int, default=8, help="failing test functions listed per row")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments, one string")
    args = ap.parse_args()

    muts = load_mutations(args.mutations)
    if args.only:
        unknown = set(args.only) - {m["name"] for m in muts}
        if unknown:
            ap.error(f"unknown mutation(s) {sorted(unknown)}; --list shows the names")
        muts = [m for m in muts if m["name"] in args.only]
    if args.list:
        for m in muts:
            print(f"{m['name']:32} {m['file']:36} {' '.join(m['tests'])}")
        return 0
    python = args.python or (str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists()
                             else sys.executable)
    tree = args.scratch.resolve()
    if ROOT == tree or ROOT in tree.parents and not str(tree.relative_to(ROOT)).startswith(".dev"):
        ap.error("--scratch inside the repo must lie under .dev/ (git-ignored)")
    extra = args.pytest_args.split()

    print(f"syncing {ROOT} -> {tree}", flush=True)
    args.synced_head = git_head()
    native_changed = sync(ROOT, tree)
    python = python_in(tree, python)
    originals = {m["file"]: (tree / m["file"]).read_text() for m in muts}
    for m in muts:  # every pattern is checked before anything is built or run
        apply(originals[m["file"]], m)
    if native_changed or not list((tree / "infinilm_torch" / "lib").glob("_infinilm*.so")):
        ok, secs = build(tree, python)
        print(f"build of the unmutated copy: {'ok' if ok else 'FAILED'} ({secs:.0f} s)", flush=True)
        if not ok:
            print((tree / ".mutate_build.log").read_text()[-4000:])
            return 2

    tests_of = (lambda m: ["tests"]) if args.all else (lambda m: m["tests"])
    broken: set[str] = set()
    if not args.no_baseline:
        union = ["tests"] if args.all else sorted({t for m in muts for t in m["tests"]})
        base = run_tests(tree, python, union, args.seed, args.timeout, extra)
        broken = set(base["failed"])
        print(f"baseline: {len(broken)} failed / {base['run']} run, {base['skipped']} skipped "
              f"({base['seconds']:.0f} s) over {' '.join(union)}", flush=True)
        for n in sorted(broken):
            print(f"  fails unmutated (not counted): {n}")

    rows = []
    for m in muts:
        path = tree / m["file"]
        row = dict(name=m["name"], file=m["file"], caught=[], run=0)
        try:
            path.write_text(apply(originals[m["file"]], m))
            built = True
            if m["file"].endswith(NATIVE):
                built, secs = build(tree, python)
                print(f"[{m['name']}] build {'ok' if built else 'FAILED'} ({secs:.0f} s)", flush=True)
            if not built:
                row["result"] = "build failed"
            else:
                res = run_tests(tree, python, tests_of(m), args.seed, args.timeout, extra)
                row["caught"] = [n for n in res["failed"] if n not in broken]
                row["run"] = res["run"]
                if res["timeout"]:
                    row["result"] = "caught (timeout)"
                elif row["run"] == 0:
                    row["result"] = "NO TESTS RAN"
                    print(res["tail"])
                else:
                    row["result"] = "caught" if row["caught"] else "MISSED"
                print(f"[{m['name']}] {row['result']}: {len(row['caught'])} / {row['run']} failed "
                      f"({res['seconds']:.0f} s)", flush=True)
        finally:
            path.write_text(originals[m["file"]])
        rows.append(row)
        if args.markdown:  # after every mutation, so an interrupted run still leaves its rows
            write_markdown(args, rows)
    if any(m["file"].endswith(NATIVE) for m in muts):
        ok, _ = build(tree, python)  # leave the copy built unmutated for the next run
        if not ok:
            print("rebuild of the restored copy FAILED; see", tree / ".mutate_build.log")

    out = table(rows, args.max_names)
    print()
    print(out)
    if args.markdown:
        write_markdown(args, rows)
    return 1 if any(r["result"] in ("MISSED", "NO TESTS RAN", "build failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
