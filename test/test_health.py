"""The node's /diagnostics summary (flashocc_ros/health.py): level, message and values per watchdog tick."""

from __future__ import annotations

import math

from flashocc_ros.health import ERROR, OK, STALE, WARN, HealthSnapshot, summarize_health

INFO = (("variant", "flashocc-r50-M0"), ("backend", "onnxruntime"), ("device", "cpu"))


def snap(t: float, **counters) -> HealthSnapshot:
    return HealthSnapshot(time_s=t, info=INFO, **counters)


def test_frames_in_the_interval_are_ok_with_rate_and_latency():
    before = snap(10.0, images_received=60, frames_processed=10)
    now = snap(12.0, images_received=84, frames_processed=14, recent_latencies_ms=(80.0, 100.0, 120.0, 300.0))
    report = summarize_health(now, before)
    values = dict(report.values)
    assert report.level == OK and report.level_name == "OK"
    assert report.message == "4 frame(s) in 2.0 s (2.00 Hz), median latency 110 ms"
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
