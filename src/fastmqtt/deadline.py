"""A cheap deadline for the current task (asyncio.timeout without needing Python 3.11)."""

from __future__ import annotations

import asyncio
from types import TracebackType


class Deadline:
    """``with Deadline(loop, seconds):`` cancels the enclosed awaits after ``seconds`` and
    raises TimeoutError in their place. No extra task is created."""

    __slots__ = ("_fired", "_handle", "_loop", "_seconds", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self._loop = loop
        self._seconds = seconds
        self._fired = False
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None

    def __enter__(self) -> Deadline:
        self._task = asyncio.current_task(self._loop)
        self._handle = self._loop.call_later(self._seconds, self._fire)
        return self

    def _fire(self) -> None:
        self._fired = True
        assert self._task is not None
        self._task.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._handle is not None and self._task is not None
        self._handle.cancel()
        if self._fired and exc_type is asyncio.CancelledError:
            if hasattr(self._task, "uncancel") and self._task.uncancel() > 0:
                return  # someone else cancelled us too: let that cancellation through
            raise TimeoutError from exc
