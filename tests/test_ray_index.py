"""`kger index --ray` on a local Ray runtime (2 CPUs) into a real `chroma run`: the single-process ids and
vectors; a rerun after the driver is killed mid-run, and a run whose worker is killed mid-run, store
everything exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed: the --ray path needs the `scale` extra (pip install -e '.[scale]')")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
KGER = [sys.executable, "-c", "from agent.cli import main; main()"]


def _kill_group(proc: subprocess.Popen) -> None:
    """The driver and what it started (its local Ray runtime) share the session the test gave it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _server_count(url: str, collection: str) -> int:
    import chromadb

    host, port = url.rsplit("//", 1)[1].split(":")
    try:
        return chromadb.HttpClient(host=host, port=int(port)).get_collection(collection).count()
    except Exception:  # not created yet
        return 0


def test_ray_index_matches_single_process_and_resumes_after_killed_driver(calibrated_bundle, entrep_train,
                                                                          chroma_server, tmp_path):
    """With a calibrated bundle, so the actors' predictions carry trust and familiarity as the single process's do."""
    from typer.testing import CliRunner

    from agent.cli import app

    bundle, home = calibrated_bundle.path, tmp_path / "single"
    single_run = CliRunner().invoke(app, ["index", str(entrep_train / "imgs"), "--bundle", str(bundle),
                                          "--home", str(home), "--json"])
    assert single_run.exit_code == 0, single_run.output
    store = "ray-resume"
    ray_probes, env, cmd = _ray_run(calibrated_bundle, entrep_train, chroma_server, store, tmp_path)
    log = open(tmp_path / "first.log", "wb")
    first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        n = _first_batch(first, chroma_server, store, tmp_path / "first.log")
        first.send_signal(signal.SIGKILL)  # the driver alone, mid-run
        first.wait()
    finally:
        _kill_group(first)
        log.close()
    assert 0 < n < 69, f"the driver was to be killed mid-run, with {n} stored"

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # a run that succeeds prints no error-level line of Ray's core (ray-project/ray#57733's is dropped)
    noise = [line for line in rerun.stderr.splitlines() if "max_restarts" in line or " E " in line[:40]]
    assert not noise, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["already_present"] >= n and summary["indexed"] + summary["already_present"] == 69
    assert summary["count"] == 69 and len(summary["duplicates"]) == 1 and summary["skipped"] == []

    from store.gallery import Gallery

    with Gallery.open(store, url=chroma_server) as on_ray, Gallery.open("default", home=home) as single:
        ray_meta, single_meta = dict(on_ray.all_metadata()), dict(single.all_metadata())
        assert sorted(ray_meta) == sorted(single_meta)
        assert all("familiarity" in m and "trusted" in m for m in ray_meta.values()), "the actors assessed trust"
        for i, m in ray_meta.items():  # labels, paths, names, predictions, trust; floats up to batch rounding
            assert m.keys() == single_meta[i].keys(), i
            for key, value in m.items():
                if isinstance(value, float):
                    assert value == pytest.approx(single_meta[i][key], abs=1e-4), (i, key)
                elif key != "class_probs":
                    assert value == single_meta[i][key], (i, key)
        ids = sorted(ray_meta)
        a = np.stack([h.embedding for h in on_ray.get(ids)])
        b = np.stack([h.embedding for h in single.get(ids)])
        assert on_ray.bundle["fingerprint"] == single.bundle["fingerprint"]
    np.testing.assert_allclose(a, b, atol=1e-5)  # other batch compositions: float32 rounding only
    _only_ray_probes(ray_probes)


def test_a_killed_ray_worker_is_replaced_and_the_run_stores_everything_once(calibrated_bundle, entrep_train,
                                                                           chroma_server, tmp_path):
    """SIGKILL one encoding actor after the first batch is stored: Ray Data restarts it and retries its batch,
    whose already-stored images then count as present; the run ends well with every image once."""
    store = "ray-worker"
    ray_probes, env, cmd = _ray_run(calibrated_bundle, entrep_train, chroma_server, store, tmp_path)
    log = open(tmp_path / "run.log", "wb")
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    try:
        n = _first_batch(run, chroma_server, store, tmp_path / "run.log")
        workers = _encoder_actors(run.pid)
        assert workers, "no encoding actor found in the run's session"
        os.kill(workers[0], signal.SIGKILL)
        out, _ = run.communicate(timeout=600)
    finally:
        _kill_group(run)
        log.close()
    assert n < 69, f"the worker was to be killed mid-run, with {n} stored"
    assert run.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]
    summary = json.loads(out)
    assert summary["indexed"] + summary["already_present"] == 69 and summary["count"] == 69, summary
    assert summary["skipped"] == []
    assert _server_count(chroma_server, "kger-" + store) == 69
    _only_ray_probes(ray_probes)


def _ray_run(calibrated_bundle, entrep_train, chroma_server: str, store: str, tmp_path: Path):
    """The netguard log, environment and command of one `kger index --ray` run into the test server."""
    # Ray's own processes probe the cloud metadata service (TPU and cloud-provider detection) whatever kger
    # asks; the network guard refuses those (nothing is sent) and these tests allow exactly them, nothing else.
    ray_probes = tmp_path / "ray-netguard.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "KGER_HOME": str(tmp_path / "home"), "RAY_USAGE_STATS_ENABLED": "0", "KGER_NETGUARD_LOG": str(ray_probes)}
    cmd = KGER + ["index", str(entrep_train / "imgs"), "--bundle", str(calibrated_bundle.path), "--store", store,
                  "--ray", "--workers", "2", "--chroma-url", chroma_server, "--batch-size", "2", "--json"]
    return ray_probes, env, cmd


def _first_batch(proc: subprocess.Popen, url: str, store: str, log: Path) -> int:
    """Wait until the run has stored something; how much."""
    deadline = time.monotonic() + 300
    while (n := _server_count(url, "kger-" + store)) == 0:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no batch stored within 300 s"
        time.sleep(0.05)
    return n


def _encoder_actors(session: int) -> list[int]:
    """PIDs of the Ray worker processes in the run's session that hold an encoding actor (`ray::MapWorker...`)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or os.getsid(int(proc.name)) != session:
                continue
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        if title.startswith("ray::") and ("MapWorker" in title or "_Encoder" in title):
            found.append(int(proc.name))
    return found


def _only_ray_probes(log: Path) -> None:
    attempts = log.read_text().splitlines() if log.exists() else []
    assert all("169.254.169.254" in a or "metadata.google.internal" in a for a in attempts), attempts


def test_ray_needs_a_chroma_server(entrep_train, tmp_path):
    bundle = tmp_path / "bundle"  # never loaded: the usage error comes first
    from typer.testing import CliRunner

    from agent.cli import app

    r = CliRunner().invoke(app, ["index", str(entrep_train / "imgs"), "--bundle", str(bundle), "--ray",
                                 "--home", str(tmp_path / "home")])
    assert r.exit_code == 2 and "--chroma-url" in r.output
