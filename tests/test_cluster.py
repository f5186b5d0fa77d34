"""Several processes for real: `serve --processes N`, and a cluster of separate processes.

- ``serve --processes 2`` on PostgreSQL: both children accept on the one socket (which
  process answered a connection is read from ``/proc``: the owner of the server side of
  that TCP connection), a task succeeds, SIGTERM stops the parent and both children with
  status 0, and a child killed with SIGKILL is replaced while the service keeps answering.
- The deployment of docs/deploy.md#several-machines on one machine: PostgreSQL, moto's S3
  server (its own process on loopback) as the store, one signing secret, two API processes
  (``serve --workers 0``) and two ``stillmotion worker`` processes, each with its own data
  dir. Submit through one API, poll and download through the other; SIGKILL the worker that
  renders a task and the other finishes it; relay tasks to the fake DashScope (its own
  process) with ``STILLMOTION_DASHSCOPE_MAX_IN_FLIGHT=2`` on both workers, and the fake
  never sees more than 2 of our tasks unfinished at once.

Every wait is bounded and generous (a busy machine); nothing asserts how long anything took.
The module skips only when PostgreSQL cannot be reached (CI has it).
"""

from __future__ import annotations

import asyncio
import http.client
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import av
import pytest
import requests
from sqlalchemy import make_url

from stillmotion import catalog
from stillmotion.media.geometry import frame_count, output_size
from stillmotion.testing.images import data_uri
from tests.servers import wait_for_port
from tests.store_fixtures import PG_ADMIN_URL, pg_database

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")


def _pg_reachable() -> bool:
    url = make_url(PG_ADMIN_URL)
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=3):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.postgres,
    pytest.mark.skipif(not _pg_reachable(), reason=f"PostgreSQL unreachable at {PG_ADMIN_URL}"),
]

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = "/task/bailian/image2video"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"}
WAIT = 60.0  # a guard against a hang, not a measurement
SECRET = "cluster-signing-secret-" + "x" * 20
UPSTREAM_KEY = "sk-cluster-upstream-4f1e9a7c2b"
RELAY_MODEL = "wan2.5-i2v-preview"  # routed to dashscope in the cluster; the rest: motion
BUCKET, PREFIX = "cluster", "svc"


# --------------------------------------------------------------------------- processes


def base_env(**settings: str) -> dict[str, str]:
    """This environment without any STILLMOTION_* or AWS_* setting, plus ``settings``."""
    env = {
        k: v for k, v in os.environ.items() if not k.upper().startswith(("STILLMOTION_", "AWS_"))
    }
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **settings}


def cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "stillmotion", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


class Proc:
    """``python ARGS``, in a session of its own, its output in ``<root>/<name>.log``."""

    def __init__(self, name: str, root: Path, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.log = root / f"{name}.log"
        self.port_file = root / f"{name}.port"
        with self.log.open("ab") as out:  # the child holds its own copy
            self.proc = subprocess.Popen(
                [sys.executable, *args],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-12000:]

    def wait_port(self) -> int:
        return wait_for_port(self.proc, self.port_file, self.output, self.name)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Signal the whole process group (the process and, say, its render processes)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        return self.proc.wait(timeout=WAIT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there after a while (cleanup)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def children_of(pid: int) -> set[int]:
    """The live (not zombie) processes whose parent is ``pid``, from ``/proc``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _socket_inode(local_port: int, remote_port: int) -> str | None:
    """The inode of the loopback TCP socket from ``local_port`` to ``remote_port``."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == (
            remote_port
        ):
            return fields[9]
    return None


def _holders(inode: str, pids: set[int]) -> set[int]:
    target = f"socket:[{inode}]"
    held = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    held.add(pid)
                    break
            except OSError:
                continue
    return held


def served_by(port: int, candidates: set[int]) -> int:
    """``GET /healthz`` on a new connection; the pid (of ``candidates``) that answered it:
    the one holding the server side of the connection, still open (keep-alive)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        assert conn.sock is not None
        client_port = conn.sock.getsockname()[1]
        inode = _socket_inode(port, client_port)
        assert inode is not None, f"no server socket for the connection from {client_port}"
        holders = _holders(inode, candidates)
        assert len(holders) == 1, (holders, candidates)
        return holders.pop()
    finally:
        conn.close()


# --------------------------------------------------------------------------- the API


def body_for(
    model: str = "wan2.6-i2v-flash", img: str | None = None, **parameters: Any
) -> dict[str, Any]:
    params: dict[str, Any] = {"resolution": "720P", "duration": 2, "audio": False}
    if model == RELAY_MODEL:
        params = {"resolution": "480P", "duration": 5}
    params.update(parameters)
    return {
        "model": model,
        "input": {
            "prompt": "The camera slowly pushes in on a quiet harbour at dawn",
            "img_url": img or data_uri(480, 320, "JPEG"),
        },
        "parameters": params,
    }


def submit(base: str, key: str, body: dict[str, Any]) -> str:
    resp = requests.post(
        base + SUBMIT, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["output"]["task_id"])


def poll(base: str, key: str, task_id: str, timeout: float = 240.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = requests.get(
            f"{base}/task/{task_id}", headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        if body["output"]["task_status"] in TERMINAL:
            return body
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish in {timeout:g} s")


def check_video(url: str, size: tuple[int, int], frames: int) -> None:
    resp = requests.get(url, timeout=60)
    assert resp.status_code == 200, resp.text[:300]
    with av.open(io.BytesIO(resp.content), "r") as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == size
        decoded = sum(1 for _ in container.decode(stream))
    assert decoded == frames > 0


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not met in {timeout:g} s: {what}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- databases


@contextmanager
def fresh_pg() -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped afterwards); its plain ``postgresql://`` URL."""
    loop = asyncio.new_event_loop()
    try:
        made = pg_database()
        url = loop.run_until_complete(made.__aenter__())
        try:
            yield url
        finally:
            loop.run_until_complete(made.__aexit__(None, None, None))
    finally:
        loop.close()


def service_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


def sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


# --------------------------------------------------------------------------- serve --processes


@contextmanager
def serve_processes(tmp_path: Path, db: str, workers: int) -> Iterator[tuple[Proc, int, str]]:
    """`serve --processes 2` on ``db``: the parent, its port, a key; killed afterwards."""
    env = base_env(
        STILLMOTION_DATABASE_URL=service_url(db),
        STILLMOTION_DATA_DIR=str(tmp_path / "data"),
        STILLMOTION_WORKERS=str(workers),
        STILLMOTION_LEASE_SECONDS="5",
        STILLMOTION_LOG_LEVEL="info",
    )
    key = cli(env, "keys", "create", "--name", "processes")
    port_file = tmp_path / "serve.port"
    args = ["-m", "stillmotion", "serve", "--processes", "2", "--port", "0", "--port-file"]
    parent = Proc("serve", tmp_path, [*args, str(port_file)], env)
    seen: set[int] = set()
    try:
        port = parent.wait_port()
        yield parent, port, key
    finally:
        seen |= children_of(parent.pid)
        parent.kill()  # the children get SIGTERM too (PR_SET_PDEATHSIG)
        for pid in seen:  # any the parent left (it did not stop cleanly): ours to end
            if alive(pid) and "--listen-fd" in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGKILL)


def ready_file(pid: int) -> Path:
    """The port file a child of `serve --processes N` writes once it serves (its
    ``--port-file=PATH`` argument, read from ``/proc``)."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    (path,) = [a.removeprefix("--port-file=") for a in args if a.startswith("--port-file=")]
    return Path(path)


def spread(port: int, children: set[int], tries: int = 400) -> Counter[int]:
    """New connections until every child has answered twice (bounded); who answered each."""
    seen: Counter[int] = Counter()
    for _ in range(tries):
        seen[served_by(port, children)] += 1
        if set(seen) == children and min(seen.values()) >= 2:
            break
    return seen


def test_serve_processes_share_the_socket_run_tasks_and_stop_with_status_0(
    tmp_path: Path,
) -> None:
    with fresh_pg() as db, serve_processes(tmp_path, db, workers=1) as (parent, port, key):
        children = children_of(parent.pid)
        assert len(children) == 2, parent.output()
        announced = [line for line in parent.output().splitlines() if "API processes" in line]
        assert len(announced) == 1 and f"2 API processes on port {port}" in announced[0]
        assert all(str(pid) in announced[0] for pid in children), announced
        seen = spread(port, children)
        assert set(seen) == children, seen  # both children accept connections

        base = f"http://127.0.0.1:{port}"
        task_id = submit(base, key, body_for())
        done = poll(base, key, task_id)
        assert done["output"]["task_status"] == "SUCCEEDED", done
        model = catalog.get_model("wan2.6-i2v-flash")
        assert model is not None
        check_video(
            done["output"]["video_url"], output_size(480, 320, "720P"), frame_count(2, model.fps)
        )
        (worker_id,) = sql(db, "SELECT worker_id FROM tasks WHERE id = $1", task_id)[0]
        assert int(worker_id.split(":")[1]) in children  # a child's own worker ran it

        os.kill(parent.pid, signal.SIGTERM)
        assert parent.proc.wait(timeout=WAIT) == 0, parent.output()
        wait_until(lambda: not any(alive(pid) for pid in children), "both children gone")
        log = parent.output()
        for pid in children:
            assert f"API process pid {pid} stopped (status 0)" in log, log
        assert "restarting" not in log and "killing" not in log, log


def test_serve_processes_restarts_a_killed_child_and_keeps_answering(tmp_path: Path) -> None:
    with fresh_pg() as db, serve_processes(tmp_path, db, workers=0) as (parent, port, _key):
        before = children_of(parent.pid)
        assert len(before) == 2, parent.output()
        victim = min(before)
        survivor = (before - {victim}).pop()
        os.kill(victim, signal.SIGKILL)
        answered = 0
        deadline = time.monotonic() + WAIT
        while True:  # the survivor answers meanwhile, then a new child appears beside it
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30).ok
            answered += 1
            now = children_of(parent.pid)
            if len(now) == 2 and victim not in now:
                break
            assert time.monotonic() < deadline, f"no new child: {now}\n{parent.output()}"
            time.sleep(0.1)
        after = children_of(parent.pid)
        assert survivor in after and victim not in after
        (new,) = after - {survivor}
        wait_until(lambda: ready_file(new).is_file(), f"the new child {new} up")
        seen = spread(port, after)
        assert set(seen) == after, seen  # the new child serves too
        log = parent.output()
        assert f"API process pid {victim} exited with status -9; restarting it" in log, log
        os.kill(parent.pid, signal.SIGTERM)
        assert parent.proc.wait(timeout=WAIT) == 0, parent.output()
        wait_until(lambda: not any(alive(pid) for pid in after), "both children gone")
        assert answered >= 1


# --------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    db: str  # plain postgresql:// URL, for asyncpg
    s3: Any  # a boto3 client of moto
    fake: str  # the fake DashScope's root URL
    api_a: str
    api_b: str
    api_dirs: tuple[Path, Path]
    workers: dict[int, Proc]  # pid -> worker process
    key: str

    def objects(self, under: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{under}")
        return sorted(item["Key"] for item in listed.get("Contents", []))


def _moto(root: Path, env: dict[str, str]) -> tuple[Proc, str]:
    """moto's S3 server in a process of its own, on a loopback port it picks itself."""
    port_file = root / "moto.port"
    code = (
        "import os, signal, sys\n"
        "from moto.server import ThreadedMotoServer\n"
        "server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
        "server.start()\n"
        "path = sys.argv[1]\n"
        "open(path + '.tmp', 'w').write(str(server.get_host_and_port()[1]))\n"
        "os.replace(path + '.tmp', path)\n"
        "signal.sigwait({signal.SIGTERM, signal.SIGINT})\n"
        "server.stop()\n"
    )
    proc = Proc("moto", root, ["-c", code, str(port_file)], env)
    return proc, f"http://127.0.0.1:{proc.wait_port()}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    procs: list[Proc] = []
    with fresh_pg() as db:
        try:
            moto, endpoint = _moto(root, base_env(**aws))
            procs.append(moto)
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            s3.create_bucket(Bucket=BUCKET)
            fake = Proc(
                "fake",
                root,
                ["-m", "stillmotion", "fake-dashscope", "--port", "0", "--key", UPSTREAM_KEY,
                 "--pending", "0.5", "--running", "1.5", "--port-file", str(root / "fake.port")],
                base_env(),
            )  # fmt: skip
            procs.append(fake)
            fake_url = f"http://127.0.0.1:{fake.wait_port()}"
            env = base_env(
                **aws,
                STILLMOTION_DATABASE_URL=service_url(db),
                STILLMOTION_STORAGE_URL=f"s3://{BUCKET}/{PREFIX}",
                STILLMOTION_S3_ENDPOINT_URL=endpoint,
                STILLMOTION_S3_REGION="us-east-1",
                STILLMOTION_SIGNING_SECRET=SECRET,
                STILLMOTION_ROUTES=f"{RELAY_MODEL}=dashscope",
                STILLMOTION_DASHSCOPE_BASE_URL=fake_url + "/api/v1",
                STILLMOTION_DASHSCOPE_API_KEYS=UPSTREAM_KEY,
                STILLMOTION_DASHSCOPE_ALLOW_PRIVATE="1",
                STILLMOTION_DASHSCOPE_MAX_IN_FLIGHT="2",
                STILLMOTION_DASHSCOPE_SUBMIT_RATE="100",
                STILLMOTION_DASHSCOPE_POLL_FIRST="0.1",
                STILLMOTION_DASHSCOPE_POLL_MAX="0.3",
                STILLMOTION_LEASE_SECONDS="5",
                STILLMOTION_WORKER_HEARTBEAT_SECONDS="1",
                STILLMOTION_POLL_INTERVAL="0.2",
                STILLMOTION_KEY_CACHE_SECONDS="0",
                STILLMOTION_LOG_LEVEL="info",
            )
            api_dirs = (root / "api-a", root / "api-b")
            key = cli({**env, "STILLMOTION_DATA_DIR": str(api_dirs[0])}, "keys", "create",
                      "--name", "cluster")  # fmt: skip
            apis = []
            for name, data in zip(("api-a", "api-b"), api_dirs, strict=True):
                api = Proc(
                    name,
                    root,
                    ["-m", "stillmotion", "serve", "--workers", "0", "--port", "0",
                     "--port-file", str(root / f"{name}.port")],
                    {**env, "STILLMOTION_DATA_DIR": str(data)},
                )  # fmt: skip
                procs.append(api)
                apis.append(f"http://127.0.0.1:{api.wait_port()}")
            workers = {}
            for name in ("worker-1", "worker-2"):
                worker = Proc(
                    name,
                    root,
                    ["-m", "stillmotion", "worker"],
                    {**env, "STILLMOTION_DATA_DIR": str(root / name), "STILLMOTION_WORKERS": "3"},
                )
                procs.append(worker)
                workers[worker.pid] = worker

            def registered() -> bool:
                for worker in workers.values():
                    assert worker.proc.poll() is None, worker.output()
                pids = {row["pid"] for row in sql(db, "SELECT pid FROM workers")}
                return pids == set(workers)

            wait_until(registered, "both workers registered")
            yield Cluster(db, s3, fake_url, apis[0], apis[1], api_dirs, workers, key)
            s3.close()
        finally:
            for proc in reversed(procs):
                proc.stop()


def _task(cluster: Cluster, task_id: str) -> asyncpg.Record:
    (row,) = sql(
        cluster.db,
        "SELECT status, worker_id, progress, attempts, result FROM tasks WHERE id = $1",
        task_id,
    )
    return row


def _events(cluster: Cluster, task_id: str) -> list[str]:
    rows = sql(cluster.db, "SELECT kind FROM task_events WHERE task_id = $1 ORDER BY id", task_id)
    return [row["kind"] for row in rows]


def test_submit_on_one_api_download_from_the_other(cluster: Cluster) -> None:
    task_id = submit(cluster.api_a, cluster.key, body_for())
    done = poll(cluster.api_b, cluster.key, task_id)
    assert done["output"]["task_status"] == "SUCCEEDED", done
    url = done["output"]["video_url"]
    assert url.startswith(cluster.api_b + "/files/")  # B's own signed URL, for A's task
    model = catalog.get_model("wan2.6-i2v-flash")
    assert model is not None
    check_video(url, output_size(480, 320, "720P"), frame_count(2, model.fps))
    assert cluster.objects(f"videos/{task_id}") == [f"{PREFIX}/videos/{task_id}-1.mp4"]
    assert len(cluster.objects(f"inputs/{task_id}/")) == 1  # the data: URI, decoded
    row = _task(cluster, task_id)
    assert int(row["worker_id"].split(":")[1]) in cluster.workers
    for data in cluster.api_dirs:  # the API processes keep no files at all: no input, no video
        assert [p for p in data.rglob("*") if p.is_file()] == []


def test_relay_caps_hold_across_both_workers(cluster: Cluster) -> None:
    requests.post(f"{cluster.fake}/_control", json={"reset": True}, timeout=30).raise_for_status()
    bases = (cluster.api_a, cluster.api_b)
    ids = [submit(bases[i % 2], cluster.key, body_for(RELAY_MODEL)) for i in range(8)]
    for i, task_id in enumerate(ids):
        done = poll(bases[(i + 1) % 2], cluster.key, task_id)
        assert done["output"]["task_status"] == "SUCCEEDED", done
    stats = requests.get(f"{cluster.fake}/_control", timeout=30).json()
    ran_by = Counter(
        int(row["worker_id"].split(":")[1])
        for row in sql(cluster.db, "SELECT worker_id FROM tasks WHERE id = ANY($1)", ids)
    )
    assert set(ran_by) <= set(cluster.workers) and sum(ran_by.values()) == 8, ran_by
    assert stats["requests"].get("submit") == 8, stats
    assert len(cluster.objects("videos/")) >= 8
    assert stats["peak_active"] <= 2, (stats, ran_by)  # MAX_IN_FLIGHT=2: for both together


@pytest.mark.timeout(900)
def test_sigkill_the_rendering_worker_and_the_other_finishes(cluster: Cluster) -> None:
    body = body_for(img=data_uri(1920, 1080, "JPEG"), resolution="1080P", duration=8)
    task_id = submit(cluster.api_a, cluster.key, body)
    deadline = time.monotonic() + 240
    while True:  # until a worker is rendering it (some progress)
        row = _task(cluster, task_id)
        if row["status"] == "RUNNING" and row["progress"] > 0:
            break
        assert row["status"] in ("PENDING", "RUNNING"), dict(row)
        assert time.monotonic() < deadline, f"never rendering: {dict(row)}"
        time.sleep(0.1)
    rendering = int(row["worker_id"].split(":")[1])
    assert rendering in cluster.workers
    (other,) = set(cluster.workers) - {rendering}
    cluster.workers[rendering].kill(signal.SIGKILL)  # with its render processes

    done = poll(cluster.api_b, cluster.key, task_id, timeout=600)
    assert done["output"]["task_status"] == "SUCCEEDED", done
    row = _task(cluster, task_id)
    assert int(row["worker_id"].split(":")[1]) == other
    assert row["attempts"] == 2
    assert _events(cluster, task_id) == ["created", "claimed", "reclaimed", "claimed", "succeeded"]
    assert cluster.objects(f"videos/{task_id}") == [f"{PREFIX}/videos/{task_id}-2.mp4"]
    model = catalog.get_model("wan2.6-i2v-flash")
    assert model is not None
    check_video(
        done["output"]["video_url"], output_size(1920, 1080, "1080P"), frame_count(8, model.fps)
    )
