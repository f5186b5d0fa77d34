"""Keep ``work/`` and ``inputs/`` from growing: remove what no live worker or task owns.

``work/`` holds one directory per worker (``w-<worker id>``), created after the worker
registered; a directory whose worker is no longer registered (it stopped, or was declared
dead and reclaimed) is a dead attempt's leftovers. Anything else there (the layout of older
versions) goes once it is older than the grace period.

``inputs/<task_id>/`` holds a submit's decoded data URIs; the submit writes them *before* it
inserts the task row, so an input is an orphan only when no row exists and it is older than
the grace period (a submit that failed after writing its inputs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import time
from collections.abc import Collection
from pathlib import Path

from stillmotion.storage.base import Storage
from stillmotion.tasks.store import TaskStore

log = logging.getLogger("stillmotion.worker")
INPUTS = "inputs/"


def worker_dir_name(worker_id: str) -> str:
    return "w-" + re.sub(r"[^A-Za-z0-9._-]", "_", worker_id)


def _sweep_work_sync(base: Path, names: list[str], live: set[str], old_before: float) -> list[str]:
    removed = []
    for name in names:
        path = base / name
        try:
            mtime = path.lstat().st_mtime
        except FileNotFoundError:
            continue
        if name in live or not (name.startswith("w-") or mtime < old_before):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(name)
    return removed


async def sweep_work(
    base: Path, store: TaskStore, grace_seconds: float, now: float | None = None
) -> list[str]:
    """Remove the work directories of workers no longer registered; their names."""
    names = await asyncio.to_thread(lambda: os.listdir(base) if base.is_dir() else [])
    if not names:
        return []
    # the registry is read after the listing: a worker registered later made no entry in it
    live = {worker_dir_name(w.id) for w in await store.workers.registered()}
    old_before = (time.time() if now is None else now) - grace_seconds
    removed = await asyncio.to_thread(_sweep_work_sync, base, names, live, old_before)
    if removed:
        log.info("removed %d work director(ies) of stopped workers", len(removed))
    return removed


async def sweep_inputs(
    storage: Storage, store: TaskStore, grace_seconds: float, now: float | None = None
) -> list[str]:
    """Delete ``inputs/<task_id>/`` older than the grace period with no task row; the ids."""
    newest: dict[str, float] = {}
    for key, modified in await storage.list_files(INPUTS):
        task_id = key[len(INPUTS) :].split("/", 1)[0]
        newest[task_id] = max(modified, newest.get(task_id, 0.0))
    old_before = (time.time() if now is None else now) - grace_seconds
    old = [task_id for task_id, modified in newest.items() if modified < old_before]
    orphans = _missing(old, await store.existing_task_ids(old)) if old else []
    for task_id in orphans:
        await storage.delete_prefix(f"{INPUTS}{task_id}/")
    if orphans:
        log.info("removed the inputs of %d submit(s) that created no task", len(orphans))
    return orphans


def _missing(ids: list[str], existing: Collection[str]) -> list[str]:
    return [task_id for task_id in ids if task_id not in existing]
