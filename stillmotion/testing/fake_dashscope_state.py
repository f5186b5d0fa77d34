"""The state behind the fake DashScope upstream: tasks, keys, scripted faults, records.

Everything here is plain Python guarded by one lock, so a test can read and script the fake
from its own thread while the server thread answers requests. See docs/fake-dashscope.md.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

#: ``[fake:NAME]`` or ``[fake:NAME=VALUE]`` anywhere in ``input.prompt`` scripts that task.
DIRECTIVE = re.compile(r"\[fake:([a-z_]+)(?:=([^\]]*))?\]")
OPS = ("submit", "get", "cancel", "list", "result")
KEY_STATES = ("ok", "denied", "invalid")
SUBMIT_ID_HEADER = "x-stillmotion-submit-id"


@dataclass
class Fault:
    """A scripted answer for the next ``times`` requests of ``op`` (-1: until cleared).

    ``status`` answers with that HTTP status and ``code``/``message`` (and ``Retry-After``
    when ``retry_after`` is set); ``delay`` answers late; ``drop`` (submit only) creates the
    task and then drops the connection before the answer is complete.
    """

    op: str
    status: int | None = None
    code: str = ""
    message: str = ""
    retry_after: float | None = None
    delay: float = 0.0
    drop: bool = False
    times: int = 1

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"fault op must be one of {', '.join(OPS)}, not {self.op!r}")


@dataclass
class FakeTask:
    task_id: str
    request_id: str
    key: str
    model: str
    body: dict[str, Any]
    created: float
    pending_seconds: float
    running_seconds: float
    expire_seconds: float
    fail: tuple[str, str] | None = None
    canceled_at: float | None = None
    submit_id: str | None = None

    def status_at(self, now: float) -> str:
        if now >= self.created + self.expire_seconds:
            return "UNKNOWN"
        if self.canceled_at is not None:
            return "CANCELED"
        if now < self.scheduled:
            return "PENDING"
        if now < self.ended:
            return "RUNNING"
        return "FAILED" if self.fail else "SUCCEEDED"

    @property
    def scheduled(self) -> float:
        return self.created + self.pending_seconds

    @property
    def ended(self) -> float:
        return self.canceled_at or self.scheduled + self.running_seconds

    @property
    def prompt(self) -> str:
        return str((self.body.get("input") or {}).get("prompt") or "")

    @property
    def parameters(self) -> dict[str, Any]:
        params = self.body.get("parameters")
        return params if isinstance(params, dict) else {}


@dataclass
class FakeConfig:
    keys: dict[str, str] = field(default_factory=lambda: {"sk-fake": "ok"})
    pending_seconds: float = 0.2
    running_seconds: float = 0.5
    url_ttl: float = 3600.0  # lifetime of a result URL
    task_ttl: float = 86400.0  # a task answers UNKNOWN this long after its submit
    time_zone: str = "Asia/Shanghai"  # of the time strings, as DashScope's examples
    video_size: tuple[int, int] = (160, 96)  # of the result MP4 (tiny: fast to make)
    #: the output seconds ``usage`` reports (None: the requested duration), to check that
    #: the relay bills what the upstream says it produced rather than what was asked
    usage_seconds: float | None = None
    #: the seconds of a ``media[first_clip]`` (a clip to continue) that ``usage`` reports as
    #: ``input_video_duration`` (billed upstream as input: duration = input + output)
    first_clip_seconds: float = 3.0


class FakeState:
    """Tasks, keys, faults and what was asked of the fake. Thread-safe."""

    def __init__(self, config: FakeConfig | None = None, *, clock: Any = time.time) -> None:
        self.config = config or FakeConfig()
        self.clock = clock
        self.lock = threading.Lock()
        self.tasks: dict[str, FakeTask] = {}
        self.peak_active = 0  # the most tasks PENDING or RUNNING at once (seen at submits)
        self.submits: list[dict[str, Any]] = []  # every submit request that reached the fake
        self.requests: Counter[str] = Counter()  # op -> count
        self.log: list[tuple[float, str, int]] = []  # (time, op, HTTP status) per API request
        self.faults: list[Fault] = []
        self.secret = uuid.uuid4().bytes
        self._by_submit_id: dict[str, str] = {}

    # -- scripting -------------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def take_fault(self, op: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.op == op and fault.times != 0:
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
            return None

    def control(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply a ``POST /_control`` body; answers :meth:`stats`."""
        with self.lock:
            if body.get("reset"):
                self.tasks.clear()
                self.submits.clear()
                self.requests.clear()
                self.log.clear()
                self.faults.clear()
                self._by_submit_id.clear()
                self.peak_active = 0
            if body.get("clear_faults"):
                self.faults.clear()
            for name in ("pending_seconds", "running_seconds", "url_ttl", "task_ttl"):
                if name in body:
                    setattr(self.config, name, float(body[name]))
            for key, state in (body.get("keys") or {}).items():
                if state not in KEY_STATES:
                    raise ValueError(f"key state must be one of {', '.join(KEY_STATES)}")
                self.config.keys[str(key)] = state
        for raw in body.get("faults") or []:
            self.add_fault(Fault(**raw))
        return self.stats()

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        with self.lock:
            statuses = Counter(t.status_at(now) for t in self.tasks.values())
            return {
                "submits": len(self.submits),
                "tasks": len(self.tasks),
                "peak_active": self.peak_active,
                "statuses": dict(statuses),
                "requests": dict(self.requests),
                "faults": [asdict(f) for f in self.faults if f.times != 0],
            }

    # -- keys ------------------------------------------------------------------------------

    def key_state(self, authorization: str | None) -> tuple[str, str]:
        """``(key, state)`` where state is ok, denied, invalid or missing."""
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return "", "missing"
        return key, self.config.keys.get(key, "invalid")

    # -- tasks -----------------------------------------------------------------------------

    def submit(
        self, key: str, body: dict[str, Any], submit_id: str | None, *, path: str = ""
    ) -> FakeTask:
        """Record a submit (``path``: the one it came to) and make its task."""
        now = self.clock()
        with self.lock:
            record = {"at": now, "key": key, "body": body, "submit_id": submit_id, "path": path}
            self.submits.append(record)
            if submit_id and submit_id in self._by_submit_id:
                return self.tasks[self._by_submit_id[submit_id]]
            task = self._new_task(key, body, now, submit_id)
            self.tasks[task.task_id] = task
            active = sum(t.status_at(now) in ("PENDING", "RUNNING") for t in self.tasks.values())
            self.peak_active = max(self.peak_active, active)
            if submit_id:
                self._by_submit_id[submit_id] = task.task_id
            return task

    def _new_task(
        self, key: str, body: dict[str, Any], now: float, submit_id: str | None
    ) -> FakeTask:
        directives = prompt_directives(body)
        fail = None
        if "fail" in directives:
            code, _, message = (directives["fail"] or "InternalError.Algo").partition(":")
            fail = (code, message or f"scripted failure {code}")
        return FakeTask(
            task_id=str(uuid.uuid4()),
            request_id=str(uuid.uuid4()),
            key=key,
            model=str(body.get("model") or ""),
            body=body,
            created=now,
            pending_seconds=_float(directives.get("pending"), self.config.pending_seconds),
            running_seconds=_float(directives.get("running"), self.config.running_seconds),
            expire_seconds=_float(directives.get("expire"), self.config.task_ttl),
            fail=fail,
            submit_id=submit_id,
        )

    def get(self, task_id: str) -> FakeTask | None:
        with self.lock:
            return self.tasks.get(task_id)

    def cancel(self, task_id: str) -> bool:
        """Cancel a PENDING task; False when it is not PENDING (or unknown)."""
        now = self.clock()
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None or task.status_at(now) != "PENDING":
                return False
            task.canceled_at = now
            return True

    def listing(self) -> list[FakeTask]:
        with self.lock:
            return list(self.tasks.values())

    # -- rendering -------------------------------------------------------------------------

    def time_string(self, epoch: float) -> str:
        zone = ZoneInfo(self.config.time_zone)
        return datetime.fromtimestamp(epoch, zone).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]

    def parse_list_time(self, value: str) -> float:
        """``YYYYMMDDhhmmss`` in the fake's zone to epoch seconds (ValueError if malformed)."""
        parsed = datetime.strptime(value, "%Y%m%d%H%M%S")
        return parsed.replace(tzinfo=ZoneInfo(self.config.time_zone)).timestamp()

    def signature(self, task_id: str, expires: int) -> str:
        digest = hashlib.sha256(self.secret + f"{task_id}:{expires}".encode())
        return digest.hexdigest()[:32]


def prompt_directives(body: dict[str, Any]) -> dict[str, str | None]:
    prompt = str((body.get("input") or {}).get("prompt") or "")
    return {name: value or None for name, value in DIRECTIVE.findall(prompt)}


def key_id(key: str) -> str:
    """What the fake lists as ``api_key_id``: a digest, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        return default
