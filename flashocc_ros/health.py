"""The node's health summary for /diagnostics (no ROS imports; the node turns it into a DiagnosticArray).

Once per watchdog tick the node takes a `HealthSnapshot` of its counters; `summarize_health` compares it with the
previous one and returns a level (diagnostic_msgs/DiagnosticStatus numbering), a one-line message and key/value
pairs. Rules, most severe first:

* ERROR: processing raised since the last tick (the node keeps serving; the message carries the last error).
* WARN: a camera is silent while others publish, a camera's CameraInfo is invalid, or sets were skipped since the
  last tick (rejected images, calibration/TF not available).
* OK: frames were published since the last tick (the message gives their rate and median latency), or images
  are arriving and the next complete six-camera set is awaited.
* STALE: neither images nor outputs since the last tick (nothing to process: a stopped bag, a disconnected rig).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# diagnostic_msgs/DiagnosticStatus levels.
OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}


@dataclass(frozen=True)
class HealthSnapshot:
    """The node's counters at one instant (monotonic seconds)."""

    time_s: float
    images_received: int = 0
    frames_processed: int = 0
    images_rejected: int = 0
    sets_skipped_calibration: int = 0
    sets_replaced: int = 0  # complete sets dropped because processing was busy (the newest one is kept)
    sets_incomplete: int = 0
    errors: int = 0
    last_problem: str = ""  # the latest rejected / skipped / failed set, as logged
    recent_latencies_ms: tuple[float, ...] = ()  # of the frames published since the previous snapshot
    silent_cameras: tuple[str, ...] = ()
    camera_info_errors: tuple[str, ...] = ()
    info: tuple[tuple[str, str], ...] = field(default=())  # static key/values (variant, backend, device)


@dataclass(frozen=True)
class HealthReport:
    level: int
    message: str
    values: tuple[tuple[str, str], ...]

    @property
    def level_name(self) -> str:
        return LEVEL_NAMES[self.level]


def summarize_health(current: HealthSnapshot, previous: HealthSnapshot) -> HealthReport:
    """Level, message and values for the interval since `previous` (the node starts from an all-zero snapshot)."""
    period = max(current.time_s - previous.time_s, 1e-9)
    frames = current.frames_processed - previous.frames_processed
    errors = current.errors - previous.errors
    skipped = (current.images_rejected - previous.images_rejected) + (
        current.sets_skipped_calibration - previous.sets_skipped_calibration
    )
    latencies = np.asarray(current.recent_latencies_ms, dtype=float)
    rate = frames / period
    p50 = float(np.median(latencies)) if latencies.size else float("nan")
    p95 = float(np.percentile(latencies, 95)) if latencies.size else float("nan")

    if errors > 0:
        level, message = ERROR, f"processing failed {errors} time(s) in the last {period:.1f} s: {current.last_problem}"
    elif current.silent_cameras:
        level, message = WARN, f"camera(s) silent while others publish: {', '.join(current.silent_cameras)}"
    elif current.camera_info_errors:
        level, message = WARN, f"invalid CameraInfo: {current.camera_info_errors[0]}"
    elif skipped > 0:
        level, message = WARN, f"{skipped} set(s) skipped in the last {period:.1f} s: {current.last_problem}"
    elif frames > 0:
        level, message = OK, f"{frames} frame(s) in {period:.1f} s ({rate:.2f} Hz), median latency {p50:.0f} ms"
    elif current.images_received > previous.images_received:
        level, message = OK, "receiving images, waiting for the next complete six-camera set"
    else:
        level, message = STALE, f"no camera image and no output in the last {period:.1f} s"

    values = list(current.info) + [
        ("output_rate_hz", f"{rate:.3f}"),
        ("latency_p50_ms", f"{p50:.1f}"),
        ("latency_p95_ms", f"{p95:.1f}"),
        ("frames_processed", str(current.frames_processed)),
        ("images_received", str(current.images_received)),
        ("images_rejected", str(current.images_rejected)),
        ("sets_skipped_calibration", str(current.sets_skipped_calibration)),
        ("sets_replaced", str(current.sets_replaced)),
        ("sets_incomplete", str(current.sets_incomplete)),
        ("errors", str(current.errors)),
        ("silent_cameras", ", ".join(current.silent_cameras)),
        ("last_problem", current.last_problem),
    ]
    return HealthReport(level, message, tuple(values))
