"""Engine benchmarks, printed as ratios against baselines measured in the same run.

    python bench/bench_core.py [--gib 1] [--dvc PATH]

1. No-op build of a 9-stage recipe (file-writing stages) against a bare doit pipeline of as many file tasks,
   and against `dvc repro` of an equivalent pipeline when dvc is on PATH or given with --dvc.
2. Hashing a page-cached file: xxh3-128 through factory.hashing vs md5 and sha256.
3. `touch` of that file: the first digest check after it, then the second, vs a no-op check.
4. Memory: peak RSS of hashing grows not with the file's size; peak RSS of a no-op build.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def timeit(cmd, cwd, env=None, n=7) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_rss_mb(cmd, cwd, env=None) -> float:
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], cwd=cwd, env=env, check=True, capture_output=True,
                         text=True).stdout
    return int(out.strip()) / 1024


BARE_DODO = '''
DOIT_CONFIG = {{"backend": "sqlite3", "dep_file": ".doit.sqlite3", "verbosity": 0}}
N = {n}
def task_step():
    for i in range(N):
        dep = "in.txt" if i == 0 else f"out{{i-1}}.txt"
        yield {{"name": str(i), "file_dep": [dep], "targets": [f"out{{i}}.txt"],
               "actions": [f"cp {{dep}} out{{i}}.txt"]}}
'''


def bare_doit(tmp: Path, n: int) -> float:
    d = tmp / "bare"
    d.mkdir()
    (d / "in.txt").write_text("x\n")
    (d / "dodo.py").write_text(BARE_DODO.format(n=n))
    subprocess.run([sys.executable, "-m", "doit"], cwd=d, check=True, capture_output=True)
    return timeit([sys.executable, "-m", "doit"], d)


def dvc_repro(tmp: Path, n: int, dvc: str | None) -> float | None:
    dvc = dvc or shutil.which("dvc")
    if not dvc:
        return None
    d = tmp / "dvc"
    d.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=d, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=d, check=True)
    (d / "in.txt").write_text("x\n")
    lines = ["stages:"]
    for i in range(n):
        dep = "in.txt" if i == 0 else f"out{i-1}.txt"
        lines += [f"  s{i}:", f"    cmd: cp {dep} out{i}.txt", f"    deps: [{dep}]", f"    outs: [out{i}.txt]"]
    (d / "dvc.yaml").write_text("\n".join(lines) + "\n")
    subprocess.run([dvc, "repro", "-q"], cwd=d, check=True, capture_output=True)
    return timeit([dvc, "repro", "-q"], d, n=3)


def factory_noop(tmp: Path) -> tuple[float, float, str, int]:
    """Median no-op seconds, peak RSS MB, what was measured, and its stage count.

    Measured on a 9-stage recipe of file-writing stages (the engine's test plugin), so the bench never
    trains; `bench/bench_pipeline.py` times the no-op of the real flagship after building it.
    """
    from conftest import RECIPE

    proj = tmp / "proj"
    (proj / "recipes" / "demo").mkdir(parents=True)
    (proj / "recipes" / "demo.yaml").write_text(RECIPE)
    (proj / "recipes" / "demo" / "lines.txt").write_text("".join(f"line {i}\n" for i in range(50)))
    shutil.copy(REPO / "dodo.py", proj / "dodo.py")
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'tests'}:{REPO}", FACTORY_LOAD_PLUGINS="enginekit")
    subprocess.run([sys.executable, "-m", "doit", "recipe:demo"], cwd=proj, env=env, check=True,
                   capture_output=True)
    cmd = [sys.executable, "-m", "doit", "recipe:demo"]
    return timeit(cmd, proj, env), peak_rss_mb(cmd, proj, env), "doit recipe:demo (file-writing stages)", 9


def hash_rate(path: Path, fn) -> float:
    size = path.stat().st_size
    t = time.perf_counter()
    fn(path)
    return size / (time.perf_counter() - t) / 1e9


def hashlib_file(algo):
    def run(path):
        h = hashlib.new(algo)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    return run


def hashing_rss_mb(path: Path) -> float:
    code = (
        "import sys, resource; sys.path.insert(0, sys.argv[2]); from factory import hashing;"
        "hashing.hash_file(sys.argv[1]); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path), str(REPO)], check=True, capture_output=True,
                         text=True).stdout
    return int(out.strip()) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0, help="size of the hashed file")
    ap.add_argument("--dvc", help="path of a dvc executable (e.g. from its own venv) to compare with")
    args = ap.parse_args()
    from factory import hashing

    with tempfile.TemporaryDirectory(dir=REPO / "cache" if (REPO / "cache").is_dir() else None) as t:
        tmp = Path(t)
        print("== no-op build ==")
        noop, noop_rss, what, n = factory_noop(tmp)
        bare = bare_doit(tmp, n)
        print(f"{what}: {noop * 1000:.0f} ms   bare doit, {n} file tasks: {bare * 1000:.0f} ms   "
              f"ratio {noop / bare:.2f}x (target <= 1.5x)")
        dvc = dvc_repro(tmp, n, args.dvc)
        if dvc is None:
            print("dvc repro: dvc not installed (pip install dvc, then rerun) — not measured")
        else:
            print(f"dvc repro, {n} stages: {dvc * 1000:.0f} ms   factory is {dvc / noop:.1f}x faster (target >= 5x)")
        print(f"peak RSS of the no-op build: {noop_rss:.0f} MB (target < 150 MB)")

        print("== hashing ==")
        big = tmp / "big.bin"
        size = int(args.gib * (1 << 30))
        with open(big, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(size >> 20):
                f.write(block)
        hashing.hash_file(big)  # into the page cache
        xxh = max(hash_rate(big, hashing.hash_file) for _ in range(3))
        md5 = hash_rate(big, hashlib_file("md5"))
        sha = hash_rate(big, hashlib_file("sha256"))
        print(f"xxh3-128 (mmap windows): {xxh:.2f} GB/s   md5: {md5:.2f} GB/s ({xxh / md5:.1f}x)   "
              f"sha256: {sha:.2f} GB/s ({xxh / sha:.1f}x)   (target >= 5 GB/s)")

        small = tmp / "small.bin"
        with open(small, "wb") as f:
            f.write(os.urandom(64 << 20))
        print(f"peak RSS hashing 64 MiB: {hashing_rss_mb(small):.0f} MB   "
              f"hashing {args.gib:g} GiB: {hashing_rss_mb(big):.0f} MB (constant memory)")

        print("== touch ==")
        cache = hashing.StatCache(tmp / "statcache.json")
        cache.digest(big)
        cache.save()
        t0 = time.perf_counter()
        hashing.StatCache(tmp / "statcache.json").digest(big)
        noop_check = time.perf_counter() - t0
        time.sleep(0.05)
        os.utime(big)
        c1 = hashing.StatCache(tmp / "statcache.json")
        t0 = time.perf_counter()
        c1.digest(big)
        first = time.perf_counter() - t0
        c1.save()
        c2 = hashing.StatCache(tmp / "statcache.json")
        t0 = time.perf_counter()
        c2.digest(big)
        second = time.perf_counter() - t0
        print(f"first check after touch: {first:.3f} s (target <= 0.6 s)   second: {second * 1000:.2f} ms   "
              f"no-op check: {noop_check * 1000:.2f} ms   (second re-hashed: {bool(c2.hashed)})")


if __name__ == "__main__":
    main()
