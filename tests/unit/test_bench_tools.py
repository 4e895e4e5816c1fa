"""The pure parts of the benchmark tools: the soak's growth figure, the peak of streams
open together, and the profile's shares. Nothing here is timed."""

from __future__ import annotations

import pytest

from bench.open_streams import peak_overlap, record_interval
from bench.profile import read_collapsed, shares
from bench.soak import second_half, slope_per_minute


def test_slope_is_mib_per_minute_of_a_straight_line() -> None:
    samples = [(t, 100 + 0.05 * t) for t in range(0, 600, 10)]  # 0.05 MiB/s
    assert slope_per_minute(samples) == pytest.approx(3.0)


def test_slope_of_flat_and_noisy_samples_is_near_zero() -> None:
    samples = [(t, 90.0 + (0.5 if (t // 10) % 2 else -0.5)) for t in range(0, 600, 10)]
    assert abs(slope_per_minute(samples)) < 0.05


def test_slope_needs_two_distinct_times() -> None:
    assert slope_per_minute([]) == 0.0
    assert slope_per_minute([(5.0, 80.0)]) == 0.0
    assert slope_per_minute([(5.0, 80.0), (5.0, 90.0)]) == 0.0


def test_growth_is_taken_over_the_second_half() -> None:
    warm_up = [(float(t), 50.0 + t) for t in range(0, 50, 10)]  # steep at first
    steady = [(float(t), 100.0) for t in range(50, 100, 10)]
    samples = warm_up + steady
    assert second_half(samples) == steady
    assert slope_per_minute(second_half(samples)) == 0.0


def test_peak_overlap_counts_intervals_open_together() -> None:
    assert peak_overlap([]) == 0
    assert peak_overlap([(0, 10), (1, 5), (2, 3), (20, 30)]) == 3
    # One ending exactly when the next starts is not open with it.
    assert peak_overlap([(0, 1), (1, 2), (2, 3)]) == 1


def test_record_interval_from_time_and_latency() -> None:
    interval = record_interval({"time": "2026-12-04T19:00:00.000Z", "latency_ms": 1500.0})
    assert interval is not None
    assert interval[1] - interval[0] == pytest.approx(1.5)
    assert record_interval({"time": "2026-12-04T19:00:00.000Z"}) is None


def test_profile_shares_count_a_function_once_per_stack() -> None:
    stacks = read_collapsed(
        [
            "main (a.py:1);f (b.py:2);f (b.py:3);g (c.py:4) 3",
            "main (a.py:1);h (d.py:5) 1",
            "not a stack line",
        ]
    )
    total, inclusive, own = shares(stacks)
    assert total == 4
    assert inclusive["f (b.py)"] == 3  # two lines of f on one stack: counted once
    assert inclusive["main (a.py)"] == 4
    assert own["g (c.py)"] == 3 and own["h (d.py)"] == 1
