"""Running tasks in worker processes, handing each idle worker the next task, stoppable at any moment.

Each worker has its own pipe to the parent and no lock is shared, so stopping early (an error, too many
skipped images, Ctrl-C) just terminates the workers: nothing can be left waiting on a lock that a killed
worker held (which ``multiprocessing.Pool.terminate`` can do).
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any


class WorkerError(RuntimeError):
    """A task raised in a worker process; the message holds the worker's traceback."""


def _serve(fn: Callable[[Any], Any], conn: Connection) -> None:
    """Worker loop: run each task received until ``None``; reply (ok, result or traceback)."""
    try:
        while (task := conn.recv()) is not None:
            try:
                reply = (True, fn(task))
            except Exception:
                reply = (False, traceback.format_exc())
            conn.send(reply)
    except (KeyboardInterrupt, EOFError):  # Ctrl-C reaches the whole process group; the parent handles it
        pass


def run_tasks(fn: Callable[[Any], Any], tasks: list, workers: int) -> Iterator[Any]:
    """``fn(task)`` for every task, in this process (one worker) or in ``workers`` processes.

    Results come as tasks finish (not in task order). Closing the iterator stops the workers.
    """
    if workers == 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    )
    pending = list(reversed(tasks))
    processes, conns = [], []
    try:
        for _ in range(min(workers, len(tasks))):
            conn, child = context.Pipe()
            process = context.Process(target=_serve, args=(fn, child), daemon=True)
            process.start()
            child.close()
            processes.append(process)
            conns.append(conn)
            conn.send(pending.pop())
        busy = list(conns)
        while busy:
            for conn in wait(busy):
                try:
                    ok, value = conn.recv()
                except EOFError:
                    raise WorkerError("a worker process died (killed, or out of memory?)") from None
                if not ok:
                    raise WorkerError(f"a worker failed:\n{value}")
                if pending:
                    conn.send(pending.pop())
                else:
                    conn.send(None)
                    busy.remove(conn)
                yield value
    finally:
        # SIGKILL, not SIGTERM: a forked worker inherits its parent's handlers (a trainer's preemption flag catches
        # SIGTERM), and it holds nothing to clean up (its results travel through the pipe, which is discarded).
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join()
        for conn in conns:
            conn.close()
