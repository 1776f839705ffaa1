"""The store a team shares: early cutoff, bit rot, gc beside builds, eviction, verify and the remote cache."""

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest

from factory import hashing
from factory.store import Store


def _manifests(root: Path) -> dict[str, dict]:
    return {m.stem: json.loads(m.read_text()) for m in (root / "cache" / "stages").glob("*.json")}


def _by_stage(root: Path, stage: str) -> tuple[str, dict]:
    return next((k, m) for k, m in _manifests(root).items() if m["stage"] == stage)


def _events_file(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines()]


# --- content-only outputs -------------------------------------------------------------

def test_a_stage_that_executes_again_with_the_same_bytes_stops_the_rebuild_there(project):
    project.doit("recipe:demo")
    runs = project.runs()
    key, man = _by_stage(project.root, "train")
    assert "seconds" in man["facts"]  # measurements live in the manifest, not in the outputs
    store = Store(project.root / "cache")
    store.drop(key)  # lost, as if evicted: the stage must execute again
    for e in man["outputs"].values():
        obj = store.object_path(e["digest"])
        os.chmod(obj, 0o644)
        obj.unlink()
    project.reset_builds()
    project.doit("recipe:demo")
    assert project.builds() == ["train"]  # same bytes, same digest: every stage after is a hit
    key2, man2 = _by_stage(project.root, "train")
    assert key2 == key and man2["output_digest"] == man["output_digest"]
    assert man2["facts"]["seconds"] != man["facts"]["seconds"]  # the facts did change
    assert project.runs() == runs  # no new run directory
    ledgers = sorted((project.root / "cache" / "events").glob("*.jsonl"), key=lambda p: p.stat().st_mtime_ns)
    built = [e for e in _events_file(ledgers[-1]) if e["status"] == "built"]  # this invocation's events
    assert [e["stage"] for e in built] == ["train"] and "seconds" in built[0]["facts"]


# --- bit rot ----------------------------------------------------------------------------

def test_stat_cache_does_not_vouch_for_a_file_whose_ctime_moved(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 4096)
    time.sleep(0.05)
    cache = hashing.StatCache(tmp_path / "sc.json")
    d0 = cache.digest(f)
    st = f.stat()
    with open(f, "r+b") as fh:  # flip one byte, then put size and mtime back, as bit rot would look
        fh.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns
    assert cache.digest(f) != d0 and cache.hashed == 2


def test_bit_rot_with_mtime_put_back_is_caught_and_the_run_directory_is_unharmed(project):
    project.doit("recipe:demo")
    run = project.runs()[0]
    good = (run / "decision.json").read_bytes()
    _, man = _by_stage(project.root, "decide")
    obj = Store(project.root / "cache").object_path(man["outputs"]["decision.json"]["digest"])
    st = obj.stat()
    os.chmod(obj, 0o644)
    data = bytearray(obj.read_bytes())
    data[2] ^= 0x01
    obj.write_bytes(bytes(data))
    os.utime(obj, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (run / "decision.json").read_bytes() == good  # a copy, not a link: damage stays in the store
    project.reset_builds()
    r = project.doit("recipe:demo")
    assert "corrupted" in r.stderr and project.builds() == ["decide"]
    assert hashing.hash_file(obj) == man["outputs"]["decision.json"]["digest"]
    _assert_run_intact(run)


def _assert_run_intact(run: Path) -> None:
    files = json.loads((run / "run_manifest.json").read_text())["files"]
    assert files and {rel: hashing.hash_file(run / rel) for rel in files} == files


def test_cache_verify_finds_and_drops_damaged_objects(project):
    project.doit("recipe:demo")
    key, man = _by_stage(project.root, "eval-baseline")
    obj = Store(project.root / "cache").object_path(next(iter(man["outputs"].values()))["digest"])
    os.chmod(obj, 0o644)
    obj.write_bytes(b"truncated")
    r = project.factory("cache", "verify", "--dry-run")
    assert r.returncode == 1 and "1 damaged" in r.stdout and obj.exists()
    r = project.factory("cache", "verify")
    assert r.returncode == 0 and "1 damaged" in r.stdout and "eval-baseline" in r.stdout
    assert not obj.exists() and key not in _manifests(project.root)
    project.reset_builds()
    project.doit("recipe:demo")
    assert project.builds() == ["eval-baseline"]


# --- gc and builds exclude each other ------------------------------------------------------

def _publisher(root: str, rounds: int, q) -> None:
    store = Store(Path(root))
    for i in range(rounds):
        d = store.new_build_dir()
        (d / "a.txt").write_text(f"round {i}\n")
        (d / "shared.txt").write_text("the same bytes every round\n")  # an object that already exists
        store.publish(f"k{i:04d}", d, {"stage": "s"})
    q.put("done")


def _collector(root: str, stop) -> None:
    store = Store(Path(root))
    while not stop.is_set():
        store.gc()


def test_gc_racing_publishes_leaves_no_manifest_without_its_objects(tmp_path):
    rounds = 300
    ctx = multiprocessing.get_context("fork")
    q, stop = ctx.Queue(), ctx.Event()
    gc = ctx.Process(target=_collector, args=(str(tmp_path), stop))
    pub = ctx.Process(target=_publisher, args=(str(tmp_path), rounds, q))
    gc.start()
    pub.start()
    try:
        assert q.get(timeout=120) == "done"
    finally:
        stop.set()
        pub.join(30)
        gc.join(30)
    store = Store(tmp_path)
    mans = [store.manifest(m.stem) for m in store.stages.glob("*.json")]
    assert len(mans) == rounds
    missing = [m["key"] for m in mans for e in m["outputs"].values() if not store.object_path(e["digest"]).exists()]
    assert missing == []  # zero manifests without objects


# --- eviction ----------------------------------------------------------------------------

def _age(root: Path, days: float) -> None:
    t = time.time() - days * 86400
    for p in (root / "cache" / "used").iterdir():
        os.utime(p, (t, t))


def test_gc_evicts_by_last_use_keeps_pinned_runs_and_runs_still_read(project):
    project.doit("recipe:demo")
    run = project.runs()[0]
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    _age(project.root, 40)
    r = project.factory("cache", "gc", "--older-than", "30d", "--dry-run")
    n = len(_manifests(project.root))
    assert "would free" in r.stdout and n >= 8
    assert project.factory("pin", run.name).returncode == 0
    r = project.factory("cache", "gc", "--older-than", "30d")
    assert r.returncode == 0 and "0 stages evicted" in r.stdout  # every stage belongs to the pinned run
    assert project.factory("pin", "--remove", run.name).returncode == 0
    r = project.factory("cache", "gc", "--older-than", "30d")
    assert f"{n} stages evicted" in r.stdout and "freed" in r.stdout
    assert _manifests(project.root) == {}
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # the run still reads
    _assert_run_intact(run)
    project.reset_builds()
    project.doit("recipe:demo")
    assert len(project.builds()) == n and project.runs() == [run]


def test_gc_max_size_evicts_least_recently_used_first(project):
    project.doit("recipe:demo")
    used = project.root / "cache" / "used"
    key, _ = _by_stage(project.root, "dataset")
    _age(project.root, 1)
    os.utime(used / key)  # the dataset was used just now
    n = len(_manifests(project.root))
    r = project.factory("cache", "gc", "--max-size", "0")
    assert f"{n} stages evicted" in r.stdout
    project.doit("recipe:demo")
    sizes = sum(e["size"] for m in _manifests(project.root).values() for e in m["outputs"].values())
    data_size = sum(e["size"] for e in _by_stage(project.root, "dataset")[1]["outputs"].values())
    _age(project.root, 1)
    os.utime(used / _by_stage(project.root, "dataset")[0])
    r = project.factory("cache", "gc", "--max-size", str(data_size))
    assert r.returncode == 0
    left = _manifests(project.root)
    assert [m["stage"] for m in left.values()] == ["dataset"] and sizes > data_size


def test_gc_rejects_a_bad_size_in_one_line(project):
    r = project.factory("cache", "gc", "--max-size", "lots")
    assert r.returncode == 2 and "--max-size" in r.stderr and "Traceback" not in r.stderr


# --- the remote cache -------------------------------------------------------------------

def _clone(project, tmp_path, name="clone"):
    """A second checkout of the same project: recipes and code, no cache/ and no runs/."""
    from conftest import Project

    dest = tmp_path / name
    shutil.copytree(project.root, dest, ignore=shutil.ignore_patterns("cache", "runs", "builds.log", ".doit*"))
    return Project(dest)


def _decision(project) -> str:
    return json.loads((project.runs()[0] / "decision.json").read_text())["decision"]


def test_two_clones_share_one_remote_the_second_builds_nothing(project, tmp_path):
    remote = tmp_path / "shared-cache"
    (project.root / "factory.toml").write_text(f'remote = "file://{remote}"\n')
    other = _clone(project, tmp_path)
    project.doit("recipe:demo")
    assert len(list((remote / "stages").glob("*.json"))) == len(_manifests(project.root))
    r = other.doit("recipe:demo")
    assert other.builds() == [] and "warning" not in r.stderr
    assert _decision(other) == _decision(project)
    assert {k: m["output_digest"] for k, m in _manifests(other.root).items()} == {
        k: m["output_digest"] for k, m in _manifests(project.root).items()}
    events = _events_file(sorted((other.root / "cache" / "events").glob("*.jsonl"))[-1])
    assert {e["status"] for e in events} == {"restored"}
    # status and a no-op: the second build of the clone never asks the remote
    r = other.factory("cache", "status", "demo")
    assert r.returncode == 0 and "local: yes" in r.stdout and "remote: no" not in r.stdout
    shutil.rmtree(remote)
    r = other.doit("recipe:demo")
    assert other.builds() == [] and r.stderr == ""


def test_a_damaged_remote_object_is_discarded_and_the_stage_built_locally(project, tmp_path):
    remote = tmp_path / "shared-cache"
    project.doit("recipe:demo", FACTORY_REMOTE=f"file://{remote}")
    key, man = _by_stage(project.root, "train")
    obj = remote / "objects" / man["outputs"]["train.json"]["digest"][:2] / man["outputs"]["train.json"]["digest"]
    obj.write_bytes(b"{}")
    other = _clone(project, tmp_path)
    r = other.doit("recipe:demo", FACTORY_REMOTE=f"file://{remote}")
    assert "does not match its digest" in r.stderr
    assert other.builds() == ["train"] and _decision(other) == _decision(project)


def test_an_unreachable_remote_is_one_warning_or_an_error_when_required(project, tmp_path):
    (tmp_path / "a-file").write_text("")
    url = f"file://{tmp_path}/a-file/cache"  # a path that cannot be a directory
    r = project.doit("recipe:demo", FACTORY_REMOTE=url)
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "unreachable" in warnings[0]
    assert len(project.builds()) == len(_manifests(project.root))
    other = _clone(project, tmp_path)
    r = other.doit("recipe:demo", check=False, FACTORY_REMOTE=url, FACTORY_REMOTE_REQUIRED="1")
    assert r.returncode != 0 and "remote_required" in (r.stdout + r.stderr)


def test_a_push_killed_half_way_shows_no_manifest_and_concurrent_pushes_agree(project, tmp_path):
    import threading

    from factory.remote import Remote

    project.doit("recipe:demo")
    store = Store(project.root / "cache")
    key, man = next((k, m) for k, m in _manifests(project.root).items() if len(m["outputs"]) > 1)
    remote = Remote(f"file://{tmp_path / 'remote'}")
    real, calls = Remote._put, []

    def dying_put(self, fs, local, dest):
        calls.append(dest)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after one object
        real(self, fs, local, dest)

    Remote._put = dying_put
    try:
        with pytest.raises(KeyboardInterrupt):
            remote.push(store, key)
    finally:
        Remote._put = real
    assert remote.manifest(key) is None and not list((tmp_path / "remote").rglob("*.json"))
    pushers = [threading.Thread(target=Remote(remote.url).push, args=(store, key)) for _ in range(4)]
    for t in pushers:
        t.start()
    for t in pushers:
        t.join()
    assert remote.manifest(key)["output_digest"] == man["output_digest"]
    objs = [p for p in (tmp_path / "remote" / "objects").rglob("*") if p.is_file()]
    assert all(hashing.hash_file(p) == p.name for p in objs) and len(objs) == len(man["outputs"])


def test_s3_remote_on_a_local_moto_server(project, tmp_path):
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    import socket

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "s3cr3t-never-written-anywhere"
    env = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=secret, region_name="us-east-1").create_bucket(Bucket="team")
        (project.root / "factory.toml").write_text(
            f'remote = "s3://team/factory-cache"\n[remote_options]\nendpoint_url = "{endpoint}"\n')
        other = _clone(project, tmp_path)
        r1 = project.doit("recipe:demo", **env)
        r2 = other.doit("recipe:demo", **env)
        assert other.builds() == [] and _decision(other) == _decision(project)
        r3 = other.factory("cache", "status", "demo", **env)
        assert r3.returncode == 0 and "remote: no" not in r3.stdout and "s3://team/factory-cache" in r3.stdout
        written = [p for root in (project.root, other.root) for p in root.rglob("*") if p.is_file()]
        assert not any(secret.encode() in p.read_bytes() for p in written)
        assert not any(secret in r.stdout + r.stderr for r in (r1, r2, r3))
    finally:
        server.stop()


# --- runs that reproduce -----------------------------------------------------------------

def test_a_run_keeps_its_recipe_and_every_resolved_setting_and_reproduces(project):
    project.doit("recipe:demo")
    run = project.runs()[0]
    cfg = json.loads((run / "config.json").read_text())
    assert (run / "recipe.yaml").read_text() == (project.root / "recipes" / "demo.yaml").read_text()
    assert cfg["stages"]["base"]["base"] == {"size": 1}  # the base's options, as the family resolved them
    assert cfg["stages"]["breadth"]["sources"][0]["options"] == {"rows": 20}  # the breadth spec
    assert set(cfg["stages"]) == set(cfg["stage_keys"]) == set(cfg["stage_outputs"])
    assert cfg["seeds"]["train.seed"] == 0
    # Today's recipe file changes; the run still reproduces from its own copy.
    project.set_recipe((project.root / "recipes" / "demo.yaml").read_text().replace("0.8", "0.5"))
    r = project.factory("reproduce", run.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(cfg['stage_keys'])} of {len(cfg['stage_keys'])} stages identical" in r.stdout
    # Changed source data: reproduce says which stages differ.
    (project.root / "recipes" / "demo" / "lines.txt").write_text("other\n" * 30)
    r = project.factory("reproduce", run.name)
    assert r.returncode == 1 and "different" in r.stdout
    assert "dataset" in next(line for line in r.stdout.splitlines() if "different" in line)


# --- stages on a Ray cluster ---------------------------------------------------------------

@pytest.mark.slow  # a Ray head takes most of a minute to start on two cores; CI runs it (`pytest -m slow`)
def test_heavy_stages_run_as_ray_tasks_on_a_local_cluster(project, tmp_path):
    pytest.importorskip("ray")
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import tempfile

    ray_bin = Path(sys.executable).with_name("ray")
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = project.env(RAY_USAGE_STATS_ENABLED="0")
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--num-cpus", "2", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--include-dashboard", "false", "--temp-dir", ray_tmp],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        text = (project.root / "recipes" / "demo.yaml").read_text()
        project.set_recipe(text.replace("train: {method: sft-lora}",
                                        "train: {method: sft-lora, resources: {num_cpus: 2}}"))
        status = [str(ray_bin), "status", "--address", f"127.0.0.1:{port}"]
        deadline = time.time() + 90
        while subprocess.run(status, env=env, capture_output=True).returncode != 0:  # the head takes a while
            assert time.time() < deadline and head.poll() is None, "the Ray head did not start"
            time.sleep(2)
        r = project.doit("recipe:demo", check=False, FACTORY_EXECUTOR="ray",
                         FACTORY_RAY_ADDRESS=f"127.0.0.1:{port}", RAY_USAGE_STATS_ENABLED="0")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        mans = {m["stage"]: m for m in _manifests(project.root).values()}
        on_ray = sorted(s for s, m in mans.items() if "ray_pid" in m.get("facts", {}))
        assert on_ray == ["base", "eval-baseline", "eval-candidate", "train"]
        assert "ray_pid" not in mans["dataset"].get("facts", {})  # light stages stay in the doit process
        assert _decision(project) == "ship"
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(60)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_the_no_op_with_a_remote_configured_imports_no_fsspec(project, tmp_path):
    (project.root / "factory.toml").write_text(f'remote = "file://{tmp_path / "remote"}"\n')
    project.doit("recipe:demo")
    r = subprocess_importtime(project)
    assert r.returncode == 0 and "fsspec" not in r.stderr and "factory.remote" not in r.stderr
    assert "import time:" in r.stderr  # the trace itself was taken


def subprocess_importtime(project):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-X", "importtime", "-m", "doit", "recipe:demo"], cwd=project.root,
                          env=project.env(), capture_output=True, text=True, timeout=120)
