"""The node's /diagnostics summary (flashocc_ros/ros/health.py): level, message and values per watchdog tick."""

from __future__ import annotations

import math

import pytest

from flashocc_ros.ros.health import ERROR, OK, STALE, WARN, HealthMonitor, HealthSnapshot, summarize_health

INFO = (("variant", "flashocc-r50-M0"), ("backend", "onnxruntime"), ("device", "cpu"))


def snap(t: float, **counters) -> HealthSnapshot:
    return HealthSnapshot(time_s=t, info=INFO, **counters)


def test_frames_in_the_interval_are_ok_with_rate_and_latency():
    before = snap(10.0, images_received=60, frames_processed=10)
    now = snap(12.0, images_received=84, frames_processed=14, recent_latencies_ms=(80.0, 100.0, 120.0, 300.0))
    report = summarize_health(now, before)
    values = dict(report.values)
    assert report.level == OK and report.level_name == "OK"
    assert report.message == "output 4 frame(s) in the last 2.0 s (2.00 Hz), median latency 110 ms"
    assert values["output_rate_hz"] == "2.000" and values["latency_p50_ms"] == "110.0"
    assert float(values["latency_p95_ms"]) == 273.0  # numpy's linear percentile of the four latencies
    assert values["frames_processed"] == "14" and values["variant"] == "flashocc-r50-M0" and values["device"] == "cpu"


def test_images_without_a_complete_set_yet_are_ok_and_nothing_at_all_is_stale():
    start = snap(0.0)
    waiting = summarize_health(snap(1.0, images_received=5), start)
    assert waiting.level == OK and "waiting for the next complete six-camera set" in waiting.message
    assert math.isnan(float(dict(waiting.values)["latency_p50_ms"]))
    idle = summarize_health(snap(2.0, images_received=5), snap(1.0, images_received=5))
    assert idle.level == STALE and idle.message == "no camera image and no output in the last 1.0 s"


def test_a_processing_error_in_the_interval_is_an_error_and_only_then():
    before = snap(1.0, images_received=12, frames_processed=1, errors=2, last_problem="RuntimeError: old")
    failed = snap(2.0, images_received=18, frames_processed=1, errors=3, last_problem="RuntimeError: CUDA OOM")
    report = summarize_health(failed, before)
    assert report.level == ERROR
    assert report.message == "processing failed 1 time(s) in the last 1.0 s: RuntimeError: CUDA OOM"
    recovered = snap(3.0, images_received=24, frames_processed=2, errors=3, last_problem="RuntimeError: CUDA OOM")
    assert summarize_health(recovered, failed).level == OK  # the counter is cumulative: old errors do not stick


def test_warnings_silent_camera_invalid_camera_info_and_skipped_sets():
    before = snap(0.0, images_received=10)
    silent = summarize_health(snap(1.0, images_received=15, silent_cameras=("CAM_BACK_LEFT",)), before)
    assert silent.level == WARN and silent.message.endswith("CAM_BACK_LEFT")
    assert dict(silent.values)["silent_cameras"] == "CAM_BACK_LEFT"
    info = summarize_health(
        snap(1.0, images_received=15, camera_info_errors=("/CAM_FRONT/camera_info: K is all zeros",)), before
    )
    assert info.level == WARN and "K is all zeros" in info.message
    problem = "CAM_BACK/image/compressed: corrupt JPEG"
    skipped = summarize_health(snap(1.0, images_received=16, images_rejected=1, last_problem=problem), before)
    assert skipped.level == WARN and skipped.message == f"1 set(s) skipped in the last 1.0 s: {problem}"
    calib = summarize_health(snap(1.0, images_received=16, sets_skipped_calibration=2), before)
    assert calib.level == WARN and calib.message.startswith("2 set(s) skipped")
    # An error outranks every warning.
    both = snap(1.0, images_received=16, errors=1, silent_cameras=("CAM_BACK",), last_problem="ValueError: x")
    assert summarize_health(both, before).level == ERROR


def _overloaded_ticks(n_ticks: int, input_hz: float = 12.0, output_period_s: float = 12.5, latency_ms: float = 400.0):
    """Snapshots of a node whose camera sets arrive at `input_hz` while one frame goes out every `output_period_s`
    (latest wins: every other complete set is replaced), one per 1 s watchdog tick."""
    snaps = [snap(0.0)]
    for t in range(1, n_ticks + 1):
        complete = int(input_hz * t)
        frames = int(t / output_period_s)
        published_now = frames - int((t - 1) / output_period_s)
        snaps.append(
            snap(
                float(t),
                images_received=6 * complete,
                sets_complete=complete,
                frames_processed=frames,
                sets_replaced=complete - frames,
                recent_latencies_ms=(latency_ms,) * published_now,
            )
        )
    return snaps


def test_overload_is_a_warning_with_the_real_output_rate_not_one_hz():
    """Issue 18 item 4: 99 % of the sets dropped, one output every 12.5 s: the per-tick rate used to read 1.00 Hz
    (OK) whenever that frame fell into the 1 s tick. Over the sliding window the rate is the real one, the latency of
    the last frame is kept, and the dropped sets are a WARN."""
    monitor = HealthMonitor(window_s=30.0, max_dropped_fraction=0.5)
    snaps = _overloaded_ticks(60)
    reports = [monitor.update(s) for s in snaps]
    for t, report in enumerate(reports[2:], start=2):
        values = dict(report.values)
        assert report.level == WARN, (t, report.message)
        assert "dropped" in report.message and "replaced while processing was busy" in report.message
        assert float(values["output_rate_hz"]) < 0.15, (t, values["output_rate_hz"])
        assert float(values["sets_dropped_fraction"]) > 0.9
    values = dict(reports[-1].values)
    assert float(values["output_rate_hz"]) == pytest.approx(2 / 30.0, abs=1e-3)  # frames at 37.5 s and 50 s
    assert values["latency_p50_ms"] == "400.0" and values["window_s"] == "30.0"


def test_slow_output_without_drops_is_ok_and_the_window_smooths_the_rate():
    """A slow replay (one set and one output every 2 s): OK, about 0.5 Hz on every tick, not 1.00 / waiting."""
    monitor = HealthMonitor(window_s=10.0, max_dropped_fraction=0.5)
    monitor.update(snap(0.0))
    rates = []
    for t in range(1, 31):
        n = t // 2
        report = monitor.update(
            snap(
                float(t),
                images_received=6 * n,
                sets_complete=n,
                frames_processed=n,
                recent_latencies_ms=(300.0,) if t % 2 == 0 else (),
            )
        )
        if t > 10:
            assert report.level == OK, report.message
            rates.append(float(dict(report.values)["output_rate_hz"]))
            assert dict(report.values)["latency_p50_ms"] == "300.0"
    assert min(rates) >= 0.4 and max(rates) <= 0.6, rates


def test_dropped_sets_below_the_threshold_or_after_the_window_are_ok():
    monitor = HealthMonitor(window_s=5.0, max_dropped_fraction=0.5)
    monitor.update(snap(0.0))
    # 12 sets/s, 9 processed, 3 replaced each second: 25 % dropped, below the threshold.
    for t in range(1, 6):
        report = monitor.update(
            snap(float(t), images_received=72 * t, sets_complete=12 * t, frames_processed=9 * t, sets_replaced=3 * t)
        )
        assert report.level == OK, report.message
    # A burst of incomplete sets (a camera dropped out for 2 s) is a warning while it is in the window ...
    base = dict(images_received=72 * 5, sets_complete=60, frames_processed=45, sets_replaced=15)
    t = 5
    for _ in range(2):
        t += 1
        base["images_received"] += 60
        base["sets_incomplete"] = base.get("sets_incomplete", 0) + 12
        report = monitor.update(snap(float(t), **base))
    assert report.level == WARN and "incomplete" in report.message
    # ... and forgotten once the window has passed with good sets.
    for _ in range(6):
        t += 1
        base = {**base, "images_received": base["images_received"] + 72, "sets_complete": base["sets_complete"] + 12}
        base["frames_processed"] += 12
        report = monitor.update(snap(float(t), **base))
    assert report.level == OK, report.message


def test_stale_after_a_few_seconds_without_input_or_output():
    monitor = HealthMonitor(window_s=10.0)
    monitor.update(snap(0.0))
    monitor.update(snap(1.0, images_received=6, sets_complete=1, frames_processed=1, recent_latencies_ms=(200.0,)))
    levels = [
        monitor.update(snap(float(t), images_received=6, sets_complete=1, frames_processed=1)) for t in (2, 3, 4, 5)
    ]
    assert [r.level for r in levels] == [OK, OK, STALE, STALE], [r.message for r in levels]
    assert levels[-1].message == "no camera image and no output in the last 3.0 s"


def test_node_counters_are_consistent_under_concurrent_workers_and_snapshots():
    """Worker, executor and watchdog share NodeCounters: every increment and every latency is counted exactly
    once, whatever the interleaving with snapshots (which move the latencies out)."""
    import sys
    import threading

    from flashocc_ros.ros.health import NodeCounters

    counters = NodeCounters()
    n_threads, n = 4, 2000
    taken: list = []
    stop = threading.Event()

    def worker():
        for _ in range(n):
            counters.add("frames_processed")
            counters.latency(1.0)
            counters.problem("errors", "boom")

    def watchdog():
        while not stop.is_set():
            taken.append(counters.snapshot(0.0))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        watch = threading.Thread(target=watchdog)
        watch.start()
        workers = [threading.Thread(target=worker) for _ in range(n_threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        stop.set()
        watch.join()
    finally:
        sys.setswitchinterval(old)
    last = counters.snapshot(1.0)
    assert last.frames_processed == last.errors == n_threads * n and last.last_problem == "boom"
    assert sum(len(s.recent_latencies_ms) for s in [*taken, last]) == n_threads * n
    frames = [s.frames_processed for s in taken]
    assert frames == sorted(frames)  # snapshots never go back


# -- temporal variants: the history in use -----------------------------------------------------------------------
def history(depth: int, expected: int, slots: int = 1, frames: int = 2, mb: float = 27.34, resets: int = 0) -> dict:
    return {
        "history_depth": depth,
        "history_slots": slots,
        "history_expected": expected,
        "history_frames": frames,
        "history_mb": mb,
        "history_resets": resets,
    }


def test_temporal_history_keys_and_a_warning_only_when_the_history_is_shorter_than_the_stream_allows():
    before = snap(10.0, images_received=60, frames_processed=10)

    def report(h, frames=11):
        return summarize_health(snap(11.0, images_received=72, frames_processed=frames, history=h), before)

    ok = report(history(1, 1))
    values = dict(ok.values)
    assert ok.level == OK
    assert (values["history_depth"], values["history_frames"], values["history_mb"], values["history_resets"]) == (
        "1/1",
        "2",
        "27.3",
        "0",
    )
    assert report(history(0, 0, resets=1)).level == OK  # first set after a start / bag loop: nothing to fuse yet
    short = report(history(3, 8, slots=8))
    assert short.level == WARN and short.message.startswith(
        "temporal history short: the last output fused 3 of 8 previous keyframe(s), the stream could have given 8"
    )
    assert "slower than the 0.5 s keyframe interval" in short.message
    assert report(history(3, 8, slots=8), frames=10).level in (OK, STALE)  # no output in the window: not judged
    assert "history_depth" not in dict(report(None).values)  # single-frame variants: no history keys
