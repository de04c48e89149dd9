"""data_prep.workers: results from worker processes, errors with their traceback, and stopping at once."""

import multiprocessing
import os
import time

import pytest

from data_prep.workers import WorkerError, run_tasks

_CHILDREN_BEFORE = set(multiprocessing.active_children())


def _no_new_children():
    return set(multiprocessing.active_children()) <= _CHILDREN_BEFORE


def _square_and_pid(x):
    return x * x, os.getpid()


def _fail_on_three(x):
    if x == 3:
        raise ValueError("three is not allowed")
    return x


def _slow(x):
    time.sleep(0.2 if x else 0.0)
    return x


def test_every_task_runs_once_across_the_workers():
    results = list(run_tasks(_square_and_pid, list(range(20)), workers=2))
    assert sorted(r for r, _ in results) == [x * x for x in range(20)]
    assert len({pid for _, pid in results} - {os.getpid()}) == 2
    assert _no_new_children()


def test_one_worker_runs_in_this_process():
    assert list(run_tasks(_square_and_pid, [1, 2], workers=1)) == [(1, os.getpid()), (4, os.getpid())]


def test_a_failing_task_raises_with_the_worker_traceback():
    with pytest.raises(WorkerError, match=r"(?s)a worker failed:.*ValueError: three is not allowed"):
        list(run_tasks(_fail_on_three, list(range(6)), workers=2))
    assert _no_new_children()


def test_closing_early_stops_the_workers_at_once():
    for _ in range(10):  # a kill while a worker is mid-reply must never hang the parent
        start = time.perf_counter()
        results = run_tasks(_slow, [0, 1, 1, 1, 1, 1], workers=2)
        assert next(results) == 0
        results.close()
        assert time.perf_counter() - start < 1.0
        assert _no_new_children()


def test_workers_stop_although_the_parent_catches_sigterm():
    """A parent with a SIGTERM handler (a trainer's preemption flag): its forked workers still end on terminate()."""
    import signal

    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        start = time.perf_counter()
        results = run_tasks(_slow, [0, 1, 1, 1, 1, 1], workers=2)
        assert next(results) == 0
        results.close()
        assert time.perf_counter() - start < 5.0
        assert _no_new_children()
    finally:
        signal.signal(signal.SIGTERM, previous)
