"""Crash recovery, on SQLite and PostgreSQL: the worker registry, dead-worker detection (by pid
on this machine, by a stale heartbeat elsewhere), the reclaim of a dead worker's tasks (the
attempt counts; the last one fails with ``InternalError.WorkerLost``), fencing of a worker
declared dead that was not, the sweeper, transition log lines, and a render stopped by
shutdown that leaves nothing running behind it."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from stillmotion.domain import TaskStatus
from stillmotion.engines.base import CancelSignal
from stillmotion.engines.motion.engine import MotionEngine
from stillmotion.storage.local import LocalStorage
from stillmotion.storage.signing import UrlSigner
from stillmotion.tasks.store import REAPED_CODE, WORKER_LOST_CODE, TaskRow, TaskStore
from stillmotion.tasks.workers import WorkerRow
from stillmotion.worker import liveness
from stillmotion.worker.housekeeping import Housekeeper, HousekeepingConfig
from stillmotion.worker.sweeper import sweep_inputs, sweep_work, worker_dir_name
from tests.store_fixtures import FakeClock, current, kinds
from tests.test_motion import make_job, textured_image

LEASE = 30.0
BEAT = 5.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())  # real epoch: rows are compared with file times


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def worker_row(worker_id: str, now: float, **kw: object) -> WorkerRow:
    return replace(liveness.this_worker(worker_id, ["motion"], now), **kw)  # type: ignore[arg-type]


def keeper(store: TaskStore, tmp_path: Path, worker_id: str = "live") -> Housekeeper:
    config = HousekeepingConfig(work_base=tmp_path / "work", heartbeat_seconds=BEAT)
    storage = LocalStorage(tmp_path / "files", UrlSigner(b"s" * 32, "http://x", 60))
    return Housekeeper(store, storage, worker_id, ["motion"], config)


async def new_task(store: TaskStore, max_attempts: int = 3) -> TaskRow:
    return await store.create_task(
        task_id=str(uuid.uuid4()), key_id="key-a", model="wan2.6-i2v", engine="motion",
        request={"prompt": "a cat"}, max_attempts=max_attempts,
    )  # fmt: skip


# -- registry and liveness ------------------------------------------------------------------


async def test_register_beat_deregister(store: TaskStore, clock: FakeClock) -> None:
    me = liveness.this_worker("w1", ["motion", "dashscope"], clock.now)
    await store.workers.register(me)
    clock.advance(2)
    assert await store.workers.beat("w1") is True
    (got,) = await store.workers.registered()
    assert got == replace(me, heartbeat_at=clock.now, engines=["dashscope", "motion"])
    assert got.pid == os.getpid() and got.machine == liveness.machine_id()
    await store.workers.deregister("w1")
    assert await store.workers.registered() == []
    assert await store.workers.beat("w1") is False  # gone: the worker must register again


def test_dead_by_pid_on_this_machine_and_by_pid_reuse() -> None:
    now = time.time()
    me = liveness.this_worker("me", [], now)
    assert liveness.why_dead(me, now, BEAT) is None
    gone = liveness.why_dead(replace(me, pid=dead_pid()), now, BEAT)
    assert gone is not None and "is gone" in gone
    assert me.process_start is not None  # Linux: /proc gives the start time
    reused = liveness.why_dead(replace(me, process_start=me.process_start - 1), now, BEAT)
    assert reused is not None and "pid reused" in reused
    # another machine (or container): its pid means nothing here, only the heartbeat counts
    elsewhere = replace(me, pid=dead_pid(), machine="other-host|boot|ns")
    assert liveness.why_dead(elsewhere, now + 3 * BEAT - 1, BEAT) is None
    stale = liveness.why_dead(elsewhere, now + 3 * BEAT + 1, BEAT)
    assert stale is not None and "heartbeat" in stale


# -- reclaim --------------------------------------------------------------------------------


async def test_start_reclaims_a_dead_workers_tasks_at_once(
    store: TaskStore, clock: FakeClock, tmp_path: Path
) -> None:
    await store.workers.register(worker_row("dead", clock.now, pid=dead_pid()))
    tasks = [await new_task(store) for _ in range(2)]
    for n in (1, 2):
        assert await store.claim(f"dead#{n}", LEASE) is not None
    untouched = await new_task(store)
    await store.workers.register(worker_row("alive", clock.now))  # this process: alive
    assert await store.claim("alive#1", LEASE) is not None
    for name in ("dead", "alive", "live"):
        (tmp_path / "work" / worker_dir_name(name) / "t-1-abc").mkdir(parents=True)

    clock.advance(1)  # long before the 30 s leases expire
    hk = keeper(store, tmp_path)
    await hk.start()
    assert hk.reclaimed == 2
    for task in tasks:
        back = await current(store, task.id)
        assert back.status is TaskStatus.PENDING and back.worker_id is None
        assert back.attempts == 1 and back.run_after == clock.now  # the attempt counts
        assert await kinds(store, task.id) == ["created", "claimed", "reclaimed"]
        detail = (await store.events(task.id))[-1]["detail"]
        assert detail["worker"] == "dead" and detail["attempt"] == 1 and "gone" in detail["reason"]
    assert (await current(store, untouched.id)).worker_id == "alive#1"
    assert {w.id for w in await store.workers.registered()} == {"alive", "live"}
    left = sorted(p.name for p in (tmp_path / "work").iterdir())
    assert left == sorted(worker_dir_name(n) for n in ("alive", "live"))
    again = await store.claim("live#1", LEASE)
    assert again is not None and again.id in {t.id for t in tasks} and again.attempts == 2


async def test_a_task_that_kills_its_worker_every_time_fails(
    store: TaskStore, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    task = await new_task(store, max_attempts=2)
    hk = keeper(store, tmp_path)
    await hk.register()
    caplog.set_level(logging.INFO, "stillmotion")
    for n in range(2):
        await store.workers.register(worker_row(f"crash{n}", clock.now, pid=dead_pid()))
        assert await store.claim(f"crash{n}#1", LEASE) is not None
        clock.advance(1)
        assert await hk.reclaim_dead() == 1
    done = await current(store, task.id)
    assert done.status is TaskStatus.FAILED and done.error_code == WORKER_LOST_CODE
    assert done.attempts == 2 and done.ended_at == clock.now and done.worker_id == "crash1#1"
    assert done.error_message == "the worker running this task died on each of its 2 attempts"
    assert await kinds(store, task.id) == ["created", "claimed", "reclaimed", "claimed", "failed"]
    assert await store.claim("live#1", LEASE) is None
    lines = [r.getMessage() for r in caplog.records if task.id in r.getMessage()]
    assert lines == [
        f"task {task.id} PENDING -> RUNNING (engine motion, attempt 1/2)",
        f"task {task.id} RUNNING -> PENDING (engine motion, attempt 1/2, reclaimed: worker crash0 "
        "process " + lines[1].split("process ", 1)[1],
        f"task {task.id} PENDING -> RUNNING (engine motion, attempt 2/2)",
        f"task {task.id} RUNNING -> FAILED (engine motion, attempt 2/2, {WORKER_LOST_CODE}: "
        "worker crash1 process " + lines[3].split("process ", 1)[1],
    ]


async def test_a_worker_declared_dead_is_fenced_out(
    store: TaskStore, clock: FakeClock, tmp_path: Path
) -> None:
    """A worker on another machine that stops beating (a partition) loses its tasks after
    three heartbeat intervals; when it comes back it can finish nothing, and registers again."""
    task = await new_task(store)
    await store.workers.register(worker_row("far", clock.now, machine="far-host|b|n"))
    assert await store.claim("far#1", LEASE) is not None
    hk = keeper(store, tmp_path)
    await hk.register()
    clock.advance(3 * BEAT - 1)
    assert await hk.reclaim_dead() == 0  # within the bound: maybe only slow
    clock.advance(2)
    assert await hk.reclaim_dead() == 1
    mine = await store.claim("live#1", LEASE)
    assert mine is not None and mine.id == task.id and mine.attempts == 2
    # the stale worker wakes up: every write of its old claim is refused
    assert await store.heartbeat(task.id, "far#1", LEASE) is None
    assert await store.finish_success(task.id, "far#1", {"video": "stale"}) is False
    assert await store.retry_later(task.id, "far#1", 1, "X", "stale") is False
    assert await store.release_worker("far#1") == 0
    await hk.beat()  # (the live worker's own heartbeat, due by now)
    far = keeper(store, tmp_path, "far")
    await far.beat()  # it learns it was declared dead, and registers again
    assert {w.id for w in await store.workers.registered()} == {"far", "live"}
    assert await store.workers.beat("far") is True
    assert await store.finish_success(task.id, "live#1", {"video": "v.mp4"}) is True
    assert await kinds(store, task.id) == [
        "created",
        "claimed",
        "reclaimed",
        "claimed",
        "succeeded",
    ]


async def test_reclaim_does_nothing_when_the_worker_beat_meanwhile(
    store: TaskStore, clock: FakeClock
) -> None:
    task = await new_task(store)
    await store.workers.register(worker_row("slow", clock.now, machine="x|y|z"))
    assert await store.claim("slow#1", LEASE) is not None
    (seen,) = await store.workers.registered()
    clock.advance(20)
    assert await store.workers.beat("slow") is True  # alive after all
    assert await store.workers.reclaim(seen, "heartbeat 20 s old") is None
    assert (await current(store, task.id)).worker_id == "slow#1"
    assert [w.id for w in await store.workers.registered()] == ["slow"]


async def test_claim_ids_match_their_worker_only(store: TaskStore, clock: FakeClock) -> None:
    """``a_b`` must not reclaim the claims of ``axb`` (LIKE wildcards are escaped)."""
    for _ in range(2):
        await new_task(store)
    await store.workers.register(worker_row("a_b%", clock.now, pid=dead_pid()))
    mine, other = await store.claim("a_b%#1", LEASE), await store.claim("axb%x#1", LEASE)
    assert mine is not None and other is not None
    (dead,) = await store.workers.registered()
    done = await store.workers.reclaim(dead, "process gone")
    assert done is not None and done.pending == [mine.id] and done.failed == []
    assert (await current(store, other.id)).status is TaskStatus.RUNNING


# -- sweeper --------------------------------------------------------------------------------


async def test_sweeper_removes_old_orphaned_inputs_only(
    store: TaskStore, clock: FakeClock, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "files", UrlSigner(b"s" * 32, "http://x", 60))
    owned = await new_task(store)
    orphan_old, orphan_young = str(uuid.uuid4()), str(uuid.uuid4())
    for task_id in (owned.id, orphan_old, orphan_young):
        await storage.put_bytes(f"inputs/{task_id}/image.png", b"png")
    old = clock.now - 601
    for task_id in (owned.id, orphan_old):
        os.utime(tmp_path / "files" / "inputs" / task_id / "image.png", (old, old))
    await storage.put_bytes(f"videos/{orphan_old}.mp4", b"mp4")  # not an input: never touched

    assert await sweep_inputs(storage, store, 600, now=clock.now) == [orphan_old]
    inputs = tmp_path / "files" / "inputs"
    assert sorted(p.name for p in inputs.iterdir()) == sorted([owned.id, orphan_young])
    assert (tmp_path / "files" / "videos" / f"{orphan_old}.mp4").is_file()
    assert await sweep_inputs(storage, store, 600, now=clock.now + 700) == [orphan_young]


async def test_sweeper_removes_work_of_unregistered_workers_and_old_strays(
    store: TaskStore, clock: FakeClock, tmp_path: Path
) -> None:
    base = tmp_path / "work"
    await store.workers.register(worker_row("w1", clock.now))
    names = [worker_dir_name("w1"), worker_dir_name("gone"), "legacy-old", "legacy-young"]
    for name in names:
        (base / name / "piece").mkdir(parents=True)
    old = clock.now - 601
    os.utime(base / "legacy-old", (old, old))
    removed = await sweep_work(base, store, 600, now=clock.now)
    assert sorted(removed) == sorted([worker_dir_name("gone"), "legacy-old"])
    assert sorted(p.name for p in base.iterdir()) == sorted([worker_dir_name("w1"), "legacy-young"])


# -- transitions and shutdown -----------------------------------------------------------------


async def test_one_log_line_per_transition(
    store: TaskStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "stillmotion.tasks")
    task = await new_task(store)
    assert await store.claim("w#1", LEASE) is not None
    assert await store.retry_later(task.id, "w#1", 0, "InternalError.Algo", "boom") is True
    assert await store.claim("w#2", LEASE) is not None
    assert await store.finish_success(task.id, "w#2", {"video": "v"}) is True
    lines = [r.getMessage() for r in caplog.records if r.name == "stillmotion.tasks"]
    assert lines == [
        f"task {task.id} new -> PENDING (engine motion, attempt 0/3)",
        f"task {task.id} PENDING -> RUNNING (engine motion, attempt 1/3)",
        f"task {task.id} RUNNING -> PENDING (engine motion, attempt 1/3, InternalError.Algo)",
        f"task {task.id} PENDING -> RUNNING (engine motion, attempt 2/3)",
        f"task {task.id} RUNNING -> SUCCEEDED (engine motion, attempt 2/3)",
    ]
    assert all("key-a" not in line for line in lines)


async def test_a_render_stopped_by_shutdown_leaves_no_process_and_no_noise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's stop cancels the runner's task mid-render; the runner then removes the
    work directory. The engine must have stopped its render processes first: before the fix
    they wrote on into the removed directory and the pool's future logged "exception was
    never retrieved ... FileNotFoundError"."""
    image = textured_image(tmp_path / "still.png")
    engine = MotionEngine(processes=2)
    started = asyncio.Event()

    async def progress(fraction: float) -> None:
        started.set()

    job = make_job(tmp_path / "work", image, size=(1280, 720), duration=10)
    caplog.set_level(logging.ERROR, "asyncio")
    try:
        run = asyncio.create_task(engine.generate(job, progress, CancelSignal()))
        await asyncio.wait_for(started.wait(), 120)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        import shutil

        shutil.rmtree(job.work_dir)  # what the runner does next
        await asyncio.sleep(1.0)  # a render still running would now fail on a missing file
        gc.collect()
        await asyncio.sleep(0)
    finally:
        await engine.aclose()
    gc.collect()
    assert [r.getMessage() for r in caplog.records] == []
    assert not job.work_dir.exists()  # nothing wrote into it again


def test_task_level_codes_are_documented() -> None:
    api = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    for code in (WORKER_LOST_CODE, REAPED_CODE):
        assert f"| `{code}` |" in api, code
