"""asyncio helpers the gateway's background tasks share."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task) -> None:
    """Cancel ``task`` and wait until it has finished, without swallowing a cancellation of the
    caller.

    ``task.cancel(); with suppress(CancelledError): await task`` looks equivalent but is not: if
    the *calling* task is cancelled while it waits (a worker stopped while it tidies up a job's
    heartbeat), that ``CancelledError`` is suppressed too, the caller carries on, and whoever
    cancelled it waits for ever. Here the caller's own cancellation (``Task.cancelling()``) is
    re-raised. Exceptions the task itself raised are not (the caller only wanted it gone).
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # noqa: BLE001 - the task's own failure; it is finished, which is all we wait for
        pass
