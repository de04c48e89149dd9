"""Step timer arithmetic with a scripted clock."""

import time

import pytest

from pretrain.telemetry.throughput import StepTimer, ThroughputWindow


def _timer(times):
    ticks = iter(times)
    return StepTimer(clock=lambda: next(ticks))


def test_window_counts_images_step_time_and_data_wait():
    timer = _timer([0.0, 0.5, 2.0, 2.25, 3.0, 4.0])
    timer.data_ready()  # waited 0.5 s for the first batch
    timer.step_done(64)
    timer.data_ready()  # 0.25 s
    timer.step_done(64)
    timer.step_done(64)  # batch was ready at once
    window = timer.window()
    assert window == ThroughputWindow(steps=3, images=192, seconds=4.0, data_wait_seconds=0.75)
    assert (window.images_per_sec, window.data_wait_frac, window.sec_per_step) == (48.0, 0.1875, 4.0 / 3)


def test_window_resets_and_restart_skips_untimed_work():
    timer = _timer([0.0, 1.0, 10.0, 10.5, 11.0])
    timer.step_done(8)
    assert timer.window().steps == 1
    timer.restart()  # an evaluation ran from 1.0 to 10.0
    timer.data_ready()
    timer.step_done(8)
    assert timer.window() == ThroughputWindow(steps=1, images=8, seconds=1.0, data_wait_seconds=0.5)


def test_empty_window_is_zero_not_nan():
    window = _timer([0.0]).window()
    assert (window.images_per_sec, window.data_wait_frac, window.sec_per_step) == (0.0, 0.0, 0.0)


def test_real_clock_measures_a_sleep():
    timer = StepTimer()
    time.sleep(0.05)
    timer.data_ready()
    timer.step_done(10)
    window = timer.window()
    assert window.data_wait_seconds == pytest.approx(window.seconds, abs=0.01)
    assert window.seconds >= 0.05
