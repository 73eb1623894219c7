"""What every trio task of the mount is waiting on, for SIGUSR1 (`kill -USR1 <pid>`).

A mount that hangs (a request the kernel waits for, an unmount that does not
finish) shows nothing in its log: its threads sit in epoll, and py-spy sees
threads, not trio tasks. On SIGUSR1 the mount logs its task tree, each task
with the innermost line its coroutine is suspended at, and keeps serving.
"""

import logging
import signal
import types

import trio

log = logging.getLogger(__name__)


TRIO = trio.__file__.rsplit("/", 1)[0] + "/"


def _where(coro: object) -> str:
    """The innermost frame outside trio a coroutine chain is suspended in: file:line function."""
    frame = None
    seen = 0
    while coro is not None and seen < 100:
        seen += 1
        f = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if f is not None and not f.f_code.co_filename.startswith(TRIO):
            frame = f
        nxt = (getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
               or getattr(coro, "ag_await", None))
        if nxt is None or isinstance(nxt, types.FrameType):
            break
        coro = nxt
    if frame is None:
        return "?"
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} {code.co_name}"


def task_tree() -> str:
    """One line per task, indented by nesting."""
    lines: list[str] = []

    def walk(task: trio.lowlevel.Task, depth: int) -> None:
        lines.append(f"{'  ' * depth}{task.name}: {_where(task.coro)}")
        for nursery in task.child_nurseries:
            for child in sorted(nursery.child_tasks, key=lambda t: t.name):
                walk(child, depth + 1)

    walk(trio.lowlevel.current_root_task(), 0)
    return "\n".join(lines)


def ignore_until_served() -> None:
    """Before `serve_dumps` runs (and after it stops) a SIGUSR1 is ignored, not fatal."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


async def serve_dumps() -> None:
    """Log the task tree at every SIGUSR1 (start it in a nursery)."""
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            log.warning("task tree (SIGUSR1):\n%s", task_tree())
