"""The skeleton of reconciling a lost submit: look for it, again while the upstream's list
may lag, and adopt exactly one match.

A family supplies one look (its list query and how an item matches our marker); none after
the last look means "not there", several mean :class:`Ambiguous`. Either way the relay fails
the task rather than ever submitting it again (``engine.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("stillmotion.engines.relay")

TRIES = (0.0, 1.0, 2.0)  # the list may lag the submit: look again after these pauses


class Ambiguous(Exception):
    """Several upstream tasks match a lost submit: adopting any of them could be wrong."""


async def look_again(look: Callable[[], Awaitable[list[str]]]) -> str | None:
    """The one upstream id ``look`` finds within :data:`TRIES`; None if it never finds one.
    Raises :class:`Ambiguous` when a look finds several."""
    for pause in TRIES:
        await asyncio.sleep(pause)
        matches = list(dict.fromkeys(await look()))
        if len(matches) > 1:
            raise Ambiguous(f"{len(matches)} upstream tasks match the lost submit")
        if matches:
            log.info("reconciled a lost submit with upstream task %s", matches[0])
            return matches[0]
    return None
