"""Jobs: the Redis store's lifecycle, the worker, and the gateway's /jobs routes, on real Redis and chdb, with
real May 2026 klines for the backtest and training jobs."""

from __future__ import annotations

import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
import redis
from fastapi.testclient import TestClient

from services.backtest.engine import BacktestConfig, run
from services.backtest.report import build_report
from services.gateway.app import create_app
from services.gateway.security import TokenStore
from services.jobs import kinds
from services.jobs.store import JobError, JobState, JobStore
from services.jobs.worker import ThinnedReporter, Worker
from streams.infer.artifacts import shipped
from streams.runtime.clock import ManualClock
from streams.runtime.settings import Settings
from tests.unit.test_gateway_api import Env, make_env

pytestmark = pytest.mark.unit
DAYS = 4


@pytest.fixture
def store(redis_url: str) -> Iterator[JobStore]:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield JobStore(client, ManualClock(1_000_000))
    client.close()


def test_lifecycle_events_and_listing(store: JobStore) -> None:
    a = store.submit("backtest", {"data": ["x"]}, "alice")
    assert isinstance(store.clock, ManualClock)
    store.clock.advance_us(1)
    b = store.submit("train", {"data": ["y"]}, "bob")
    assert (a.state, a.progress, a.attempts) == (JobState.QUEUED, 0.0, 0)
    assert [j.job_id for j in store.recent()] == [b.job_id, a.job_id]  # newest first
    claimed = store.claim("w1", 0.1)
    assert claimed is not None and claimed.job_id == a.job_id  # oldest first
    assert (claimed.state, claimed.attempts) == (JobState.RUNNING, 1)
    store.progress(a.job_id, 0.5, "half")
    store.progress(a.job_id, 7.0, "clamped")
    done = store.finish(a.job_id, "w1", result={"run_id": "r1"})
    assert (done.state, done.progress, done.result) == (JobState.SUCCEEDED, 1.0, {"run_id": "r1"})
    events = store.events(a.job_id)
    assert [(e.state, e.progress, e.message) for e in events] == [
        (JobState.QUEUED, 0.0, "queued"), (JobState.RUNNING, 0.0, "running on w1"), (JobState.RUNNING, 0.5, "half"),
        (JobState.RUNNING, 1.0, "clamped"), (JobState.SUCCEEDED, 1.0, "done")]
    assert [e.message for e in store.events(a.job_id, after=events[2].event_id)] == ["clamped", "done"]
    # The global stream announces state changes only (no progress lines), for `surge notify`.
    assert [(e.job_id, e.state) for e in store.announcements()] == [
        (a.job_id, JobState.QUEUED), (b.job_id, JobState.QUEUED), (a.job_id, JobState.RUNNING),
        (a.job_id, JobState.SUCCEEDED)]
    assert [j.job_id for j in store.recent(state=JobState.QUEUED)] == [b.job_id]
    assert [j.job_id for j in store.recent(kind="backtest")] == [a.job_id]
    assert store.redis.ttl(f"surge:jobs:job:{a.job_id}") > 0 and store.redis.ttl(f"surge:jobs:job:{b.job_id}") == -1
    with pytest.raises(JobError, match="no job nope"):
        store.get("nope")


def test_a_job_whose_worker_died_is_requeued_then_failed_after_max_attempts(store: JobStore) -> None:
    job = store.submit("train", {}, "alice")
    assert store.claim("w1", 0.1) is not None  # ... and w1 dies here
    assert store.claim("w2", 0.1) is None  # not visible to another worker while w1 holds it
    assert store.recover("w1", max_attempts=2) == [job.job_id]
    assert store.get(job.job_id).state == JobState.QUEUED
    assert store.claim("w1", 0.1) is not None  # attempt 2; dies again
    assert store.recover("w1", max_attempts=2) == []
    failed = store.get(job.job_id)
    assert failed.state == JobState.FAILED and "2 time(s)" in failed.error and failed.attempts == 2
    assert store.claim("w1", 0.1) is None


def test_thinned_reporter_writes_steps_phases_and_log_lines(store: JobStore) -> None:
    job = store.submit("backtest", {}, "alice")
    report = ThinnedReporter(store, job.job_id)
    for i in range(1, 1001):
        report(i / 1000, f"decisions {i}/1000")
    report(-1.0, "a log line")
    report(1.0, "storing the run")
    progress = [(round(e.progress, 3), e.message) for e in store.events(job.job_id, count=1_000)][1:]
    # The first report, each 1 % step, the log line (at the last fraction) and the new phase.
    assert len(progress) == 1 + 100 + 2
    assert progress[:3] == [(0.001, "decisions 1/1000"), (0.01, "decisions 10/1000"), (0.02, "decisions 20/1000")]
    assert progress[-2:] == [(1.0, "a log line"), (1.0, "storing the run")]


def test_paths_outside_the_allowed_folders_are_refused(tmp_path: Path) -> None:
    """Tried: an absolute path elsewhere, a relative escape, a symlink out of the root, a symlinked file inside an
    allowed folder that leads out, a relative path, a missing file (refused when the worker runs it, not at
    submission: the gateway may not mount the data), and an unknown parameter."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "ok.csv").write_text("1\n")
    (root / "link").symlink_to("/etc")
    paths = kinds.JobPaths(Settings.model_construct(jobs_data_root=root, data_dir=tmp_path / "state"), "j1")
    assert paths.files([str(root)]) == [root / "ok.csv"]
    for bad in ("/etc/passwd", str(root / ".." / ".." / "etc"), str(root / "link" / "passwd")):
        with pytest.raises(kinds.JobInputError, match="not under"):
            paths.readable(bad)
    (root / "inside.csv").symlink_to("/etc/hostname")
    with pytest.raises(kinds.JobInputError, match=r"inside\.csv: not under"):
        paths.files([str(root)])
    with pytest.raises(kinds.JobInputError, match="absolute"):
        kinds.validate("train", {"data": ["data/ok.csv"]}, paths)
    missing = str(root / "missing.csv")
    assert isinstance(kinds.validate("train", {"data": [missing]}, paths), kinds.TrainParams)
    with pytest.raises(kinds.JobInputError, match="does not exist"):
        paths.files([missing])
    with pytest.raises(ValueError, match="extra"):
        kinds.validate("train", {"data": [str(root)], "surprise": 1}, paths)


# --- the gateway and the worker together ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def may_klines(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first DAYS days of the real May 2026 BTCUSDT 1-minute klines, as a file of their own."""
    folder = tmp_path_factory.mktemp("klines")
    with zipfile.ZipFile(shared_data / "klines_1m" / "BTCUSDT-1m-2026-05.zip") as z:
        name = z.namelist()[0]
        frame = pd.read_csv(z.open(name), header=None, nrows=DAYS * 1440)
    path = folder / "BTCUSDT-1m-2026-05.csv"
    frame.to_csv(path, header=False, index=False)
    return path


def _worker_env(tmp_path: Path, redis_url: str, root: Path) -> Iterator[tuple[Env, dict[str, str], Settings]]:
    for env in make_env(tmp_path, redis_url, cache_l1_ttl_ms=0, jobs_data_root=root, data_dir=tmp_path / "state"):
        admin, _ = TokenStore(env.redis).create("ops", ["admin"])
        settings = Settings(clickhouse_url=f"chdb://{env.folder}", redis_url=redis_url, jobs_data_root=root,
                            data_dir=tmp_path / "state")
        yield env, {"Authorization": f"Bearer {admin}"}, settings


def _run_worker_until_idle(settings: Settings, redis_url: str, *job_ids: str) -> None:
    """A worker thread that runs until the jobs have ended (the worker's own loop, as `surge jobs worker`)."""
    store = JobStore(redis.Redis.from_url(redis_url), ManualClock(5_000_000))
    stop = threading.Event()
    worker = Worker(store, settings)
    thread = threading.Thread(target=worker.run, args=(stop, 0.2), daemon=True)
    thread.start()
    try:
        for _ in range(1200):
            if all(store.get(job_id).state.terminal for job_id in job_ids):
                break
            stop.wait(0.5)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_backtest_job_through_the_gateway_matches_the_engine(tmp_path: Path, redis_url: str,
                                                             may_klines: Path) -> None:
    for env, admin, settings in _worker_env(tmp_path, redis_url, may_klines.parent):
        body = {"data": [str(may_klines)], "mode": "neutral", "latency_ms": "fixed:50"}
        assert env.client.post("/jobs/backtest", json=body).status_code == 401
        read, _ = TokenStore(env.redis).create("viewer", ["read"])
        assert env.client.post("/jobs/backtest", json=body,
                               headers={"Authorization": f"Bearer {read}"}).status_code == 403
        refused = env.client.post("/jobs/backtest", json={**body, "data": ["/etc/passwd"]}, headers=admin)
        assert refused.status_code == 422 and "not under" in refused.json()["detail"]
        assert env.client.post("/jobs/backtest", json={**body, "mode": "reckless"}, headers=admin).status_code == 422
        resp = env.client.post("/jobs/backtest", json=body, headers=admin)
        assert resp.status_code == 202, resp.text
        job = resp.json()
        assert job["state"] == "queued" and job["actor"].startswith("token:")
        assert env.client.get(f"/jobs/{job['job_id']}").json()["state"] == "queued"

        _run_worker_until_idle(settings, redis_url, job["job_id"])
        done = env.client.get(f"/jobs/{job['job_id']}").json()
        assert done["state"] == "succeeded", done["error"]
        # The job ran the engine the command line runs: the same run id and metrics.
        direct = build_report(run(BacktestConfig(data=(may_klines,), model_dir=shipped("btcusdt-klines"),
                                                 mode="neutral", latency="fixed:50"), settings))
        assert done["result"]["run_id"] == direct["run_id"]
        assert done["result"]["metrics"]["trades"] == direct["metrics"]["trades"]
        stored = env.client.get(f"/reports/backtest/{direct['run_id']}")
        assert stored.status_code == 200
        for name in ("json", "trades", "html"):
            assert Path(done["result"]["files"][name]).is_file()
        assert Path(done["result"]["files"]["json"]).parent == settings.data_dir.resolve() / "jobs" / job["job_id"]

        with env.client.stream("GET", f"/jobs/{job['job_id']}/events") as stream:
            frames = [orjson.loads(line[len("data: "):]) for line in stream.iter_lines()
                      if line.startswith("data: ")]
        assert [f["state"] for f in frames][:2] == ["queued", "running"] and frames[-1]["state"] == "succeeded"
        running = [f["progress"] for f in frames[1:-1]]
        assert len(running) >= 3 and running == sorted(running)  # progress never goes back
        resumed = _events_after(env, job["job_id"], frames[-2]["event_id"])
        assert [f["state"] for f in resumed] == ["succeeded"]  # Last-Event-ID resumes after that event
        # An EventSource reconnecting after the last event of an ended job gets 204, which stops it for good.
        last = env.client.get(f"/jobs/{job['job_id']}/events", headers={"Last-Event-ID": frames[-1]["event_id"]})
        assert last.status_code == 204
        audit = env.warehouse.query("SELECT action, model_version FROM surge.audit_logs "
                                    "WHERE action = 'job_submit_backtest'")
        assert [(r["action"], r["model_version"]) for r in audit] == [("job_submit_backtest", job["job_id"])]


def _events_after(env: Env, job_id: str, event_id: str) -> list[dict[str, Any]]:
    with env.client.stream("GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": event_id}) as stream:
        return [orjson.loads(line[len("data: "):]) for line in stream.iter_lines() if line.startswith("data: ")]


def test_jobs_survive_a_gateway_restart_and_a_failed_job_says_why(tmp_path: Path, redis_url: str,
                                                                   may_klines: Path) -> None:
    """Jobs queued through one gateway are run by the worker and read back through a new gateway (Redis is all
    they share). A train job on real klines registers its model; one on 200 bars fails with the trainer's own
    error, and the worker goes on with the next job."""
    tiny = may_klines.parent / "tiny" / "BTCUSDT-1m-2026-05.csv"
    tiny.parent.mkdir(exist_ok=True)
    tiny.write_text("".join(may_klines.read_text().splitlines(keepends=True)[:200]))
    ids: list[str] = []
    settings = Settings.defaults()
    for env, admin, settings in _worker_env(tmp_path, redis_url, may_klines.parent):  # noqa: B007  # used below
        for data in (tiny, may_klines):
            resp = env.client.post("/jobs/train", json={"data": [str(data)], "horizons": [30], "folds": 2,
                                                        "num_boost_round": 5, "register_model": True}, headers=admin)
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["job_id"])
    _run_worker_until_idle(settings, redis_url, *ids)
    with TestClient(create_app(settings)) as restarted:  # a new gateway: nothing of the old one but Redis
        failed, succeeded = (restarted.get(f"/jobs/{i}").json() for i in ids)
        listed = restarted.get("/jobs", params={"kind": "train"}).json()
        models = {m["model_version"] for m in restarted.get("/models").json()}
    assert [j["job_id"] for j in listed] == ids[::-1]
    assert failed["state"] == "failed" and failed["error"].startswith("DataError"), failed
    assert failed["progress"] < 1.0 and failed["finished_us"] > 0
    assert succeeded["state"] == "succeeded" and succeeded["result"]["registered"] is True, succeeded
    assert Path(succeeded["result"]["artifact"], "model.onnx").is_file()
    assert succeeded["result"]["model_version"] in models
