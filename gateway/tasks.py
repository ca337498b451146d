"""Small asyncio helpers shared by the parts that run task groups."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")


def cancel_requests() -> int:
    """How many cancellation requests the current task has pending (see `restore_cancel_requests`)."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def restore_cancel_requests(before: int) -> None:
    """Take back the cancellation a failed TaskGroup requested of its parent task.

    Python 3.11's TaskGroup cancels the task running it when a child fails and, on that path,
    never calls uncancel(); the leftover request would then make the task look cancelled to
    everything that asks later (fixed in 3.12, where this is a no-op). Call it with the count
    taken before entering the group, once the group's error has been handled.
    """
    task = asyncio.current_task()
    while task is not None and task.cancelling() > before:
        task.uncancel()


async def commit_until_cancelled(wake: asyncio.Event, commit: Callable[[], Awaitable[None]],
                                 pending: Callable[[], bool]) -> None:
    """The loop of a group-commit writer: `commit()` whatever was queued each time `wake` is set (commit clears
    it), until cancelled; then, shielded, what is still `pending()`, so that what was handed over at shutdown
    still reaches the disk."""
    try:
        while True:
            await wake.wait()
            await commit()
    finally:
        if pending():
            await asyncio.shield(commit())


class OwnThread:
    """The one worker thread a blocking resource (an SQLite connection) is used on, and only there.

    Jobs are shielded: once handed to the thread a job runs to its end even if its caller is cancelled, so a
    commit queued behind a fetch is never dropped at shutdown, losing what was read.
    """

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, function: Callable[..., _T], *args: object) -> _T:
        job = asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        return await asyncio.shield(job)

    def stop(self) -> None:
        """Wait for the thread to finish what it was given, and end it."""
        self._executor.shutdown(wait=True)
