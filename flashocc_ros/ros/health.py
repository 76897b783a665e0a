"""The node's health summary for /diagnostics (no ROS imports; the node turns it into a DiagnosticArray).

Once per watchdog tick the node takes a `HealthSnapshot` of its counters and hands it to a `HealthMonitor`, which
keeps the snapshots of a sliding window (`window_s`, 10 s by default) and returns a level
(diagnostic_msgs/DiagnosticStatus numbering), a one-line message and key/value pairs. Output rate, latency and
dropped sets are measured over the window, so a slow output (one frame every few seconds) reads its real rate
instead of "1 frame in the last second = 1.00 Hz" or nothing; errors, skips and STALE use the last tick, so they
show (and clear) at once; STALE needs STALE_AFTER_S without input and output. Rules, most severe first:

* ERROR: processing raised since the last tick (the node keeps serving; the message carries the last error).
* WARN: a camera is silent while others publish, a camera's CameraInfo is invalid, or sets were skipped since the
  last tick (rejected images, calibration/TF not available).
* WARN: more than `max_dropped_fraction` of the camera sets of the window were dropped (replaced by a newer set
  while processing was busy: the node is slower than its input; or incomplete: a camera missing or outside the
  spread), at least MIN_DROPPED of them.
* WARN (temporal variants): the last output fused fewer previous keyframes (``history_depth``) than the stream
  could have given it (``history_expected``: the slots whose keyframe time lies after the stream's start, i.e. the
  first set since the node started or time went back): the node is slower than the 0.5 s keyframe interval (every
  set comes more than 0.5 s + tolerance after the previous one, which resets the history), or sets near the
  keyframe times were missing. The first sets after a start or a bag loop are not a warning.
* STALE: neither images nor outputs for STALE_AFTER_S (nothing to process: a stopped bag, a disconnected rig).
* OK: frames were published in the window (the message gives their rate and median latency), or images are
  arriving and the next complete six-camera set is awaited.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

# diagnostic_msgs/DiagnosticStatus levels.
OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}

DEFAULT_WINDOW_S = 10.0
DEFAULT_MAX_DROPPED_FRACTION = 0.5
STALE_AFTER_S = 3.0  # STALE after this long without images and outputs (a slow replay sends a set every 1-2 s)
MIN_DROPPED = 3  # fewer dropped sets in the window are never a warning (start-up, a single replaced set)


@dataclass(frozen=True)
class HealthSnapshot:
    """The node's counters at one instant (monotonic seconds)."""

    time_s: float
    images_received: int = 0
    frames_processed: int = 0
    images_rejected: int = 0
    sets_skipped_calibration: int = 0
    sets_complete: int = 0  # complete camera sets assembled by the synchronizer
    sets_replaced: int = 0  # complete sets dropped because processing was busy (the newest one is kept)
    sets_incomplete: int = 0
    errors: int = 0
    last_problem: str = ""  # the latest rejected / skipped / failed set, as logged
    recent_latencies_ms: tuple[float, ...] = ()  # of the frames published since the previous snapshot
    silent_cameras: tuple[str, ...] = ()
    camera_info_errors: tuple[str, ...] = ()
    info: tuple[tuple[str, str], ...] = field(default=())  # static key/values (variant, backend, device)
    history: dict | None = None  # temporal variants: TemporalPipeline.status() (history_depth, _slots, ...)


# NodeCounters fields that a HealthSnapshot carries as they are.
HEALTH_COUNTERS = (
    "images_received",
    "frames_processed",
    "images_rejected",
    "sets_skipped_calibration",
    "errors",
    "last_problem",
)


@dataclass
class NodeCounters:
    """The node's running counts, shared by the worker thread (frames, skips, errors), the executor callbacks
    (images) and the watchdog (snapshots). Every change goes through `add` / `problem` / `latency` and every
    consistent read through `take`, all under one lock; reading one attribute alone is a plain int read."""

    frames_processed: int = 0
    images_rejected: int = 0
    sets_skipped_calibration: int = 0
    calibration_updates: int = 0  # the rig (K, camera -> ego, image size) changed
    ego_pose_updates: int = 0  # only the per-camera ego poses changed: voxel-pooling indices recomputed
    ego_pose_reuses: int = 0  # poses changed by less than tf.pose_tolerance_m: indices kept
    sets_uncompensated: int = 0  # processed with one shared ego pose (no world <- ego pose for them)
    errors: int = 0
    images_received: int = 0
    last_problem: str = ""  # the latest skipped / failed set, as logged (for /diagnostics)
    recent_latencies_ms: list[float] = field(default_factory=list)  # frames published since the last take()
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> int:
        """Increase counter `name` by `n`; returns the new value."""
        with self._lock:
            value = getattr(self, name) + n
            setattr(self, name, value)
            return value

    def problem(self, name: str, text: str) -> None:
        """Count one skipped / failed set under `name` and remember why."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)
            self.last_problem = text

    def latency(self, latency_ms: float) -> None:
        with self._lock:
            self.recent_latencies_ms.append(latency_ms)

    def snapshot(self, time_s: float, **sync_state) -> HealthSnapshot:
        """A HealthSnapshot of the counters at one instant plus `sync_state` (sets_complete, silent_cameras, ...);
        the latencies collected since the previous snapshot are moved into it."""
        with self._lock:
            latencies, self.recent_latencies_ms = tuple(self.recent_latencies_ms), []
            counts = {name: getattr(self, name) for name in HEALTH_COUNTERS}
        return HealthSnapshot(time_s=time_s, recent_latencies_ms=latencies, **counts, **sync_state)


@dataclass(frozen=True)
class HealthReport:
    level: int
    message: str
    values: tuple[tuple[str, str], ...]

    @property
    def level_name(self) -> str:
        return LEVEL_NAMES[self.level]


def summarize_health(
    current: HealthSnapshot,
    previous: HealthSnapshot,
    window_start: HealthSnapshot | None = None,
    window_latencies_ms: tuple[float, ...] | None = None,
    max_dropped_fraction: float = DEFAULT_MAX_DROPPED_FRACTION,
    stale_baseline: HealthSnapshot | None = None,
) -> HealthReport:
    """Level, message and values at `current`. Errors, skips and STALE are judged since `previous` (the last tick;
    the node starts from an all-zero snapshot); output rate, latency and dropped sets since `window_start` (default:
    `previous`) with the latencies of the frames published in that window (default: `current.recent_latencies_ms`);
    STALE since `stale_baseline` (default: `previous`).
    """
    stale_baseline = previous if stale_baseline is None else stale_baseline
    window_start = previous if window_start is None else window_start
    latencies_ms = current.recent_latencies_ms if window_latencies_ms is None else window_latencies_ms
    period = max(current.time_s - previous.time_s, 1e-9)
    span = max(current.time_s - window_start.time_s, 1e-9)
    errors = current.errors - previous.errors
    skipped = (current.images_rejected - previous.images_rejected) + (
        current.sets_skipped_calibration - previous.sets_skipped_calibration
    )
    frames = current.frames_processed - window_start.frames_processed
    replaced = current.sets_replaced - window_start.sets_replaced
    incomplete = current.sets_incomplete - window_start.sets_incomplete
    offered = (current.sets_complete - window_start.sets_complete) + incomplete
    dropped = replaced + incomplete
    dropped_fraction = dropped / offered if offered > 0 else 0.0
    latencies = np.asarray(latencies_ms, dtype=float)
    rate = frames / span
    p50 = float(np.median(latencies)) if latencies.size else float("nan")
    p95 = float(np.percentile(latencies, 95)) if latencies.size else float("nan")
    output = f"output {frames} frame(s) in the last {span:.1f} s ({rate:.2f} Hz)" + (
        f", median latency {p50:.0f} ms" if latencies.size else ""
    )

    if errors > 0:
        level, message = ERROR, f"processing failed {errors} time(s) in the last {period:.1f} s: {current.last_problem}"
    elif current.silent_cameras:
        level, message = WARN, f"camera(s) silent while others publish: {', '.join(current.silent_cameras)}"
    elif current.camera_info_errors:
        level, message = WARN, f"invalid CameraInfo: {current.camera_info_errors[0]}"
    elif skipped > 0:
        level, message = WARN, f"{skipped} set(s) skipped in the last {period:.1f} s: {current.last_problem}"
    elif dropped >= MIN_DROPPED and dropped_fraction > max_dropped_fraction:
        causes = []
        if replaced:
            causes.append(f"{replaced} replaced while processing was busy (processing is slower than the input)")
        if incomplete:
            causes.append(f"{incomplete} incomplete (a camera missing or outside sync.max_spread_ms)")
        level = WARN
        message = (
            f"{dropped} of {offered} camera sets ({100 * dropped_fraction:.0f} %) dropped in the last {span:.1f} s: "
            f"{'; '.join(causes)}; {output}"
        )
    elif frames > 0 and history_short(current.history):
        h = current.history
        level = WARN
        message = (
            f"temporal history short: the last output fused {h['history_depth']} of {h['history_slots']} previous "
            f"keyframe(s), the stream could have given {h['history_expected']} (the node is slower than the 0.5 s "
            f"keyframe interval, or sets near the keyframe times were missing); {output}"
        )
    elif (
        current.frames_processed == stale_baseline.frames_processed
        and current.images_received == stale_baseline.images_received
    ):
        idle = max(current.time_s - stale_baseline.time_s, 1e-9)
        level, message = STALE, f"no camera image and no output in the last {idle:.1f} s"
    elif frames > 0:
        level, message = OK, output
    else:
        level, message = OK, "receiving images, waiting for the next complete six-camera set"

    values = list(current.info) + [
        ("window_s", f"{span:.1f}"),
        ("output_rate_hz", f"{rate:.3f}"),
        ("latency_p50_ms", f"{p50:.1f}"),
        ("latency_p95_ms", f"{p95:.1f}"),
        ("frames_processed", str(current.frames_processed)),
        ("images_received", str(current.images_received)),
        ("images_rejected", str(current.images_rejected)),
        ("sets_skipped_calibration", str(current.sets_skipped_calibration)),
        ("sets_complete", str(current.sets_complete)),
        ("sets_replaced", str(current.sets_replaced)),
        ("sets_dropped_fraction", f"{dropped_fraction:.3f}"),
        ("sets_incomplete", str(current.sets_incomplete)),
        ("errors", str(current.errors)),
        ("silent_cameras", ", ".join(current.silent_cameras)),
        ("last_problem", current.last_problem),
    ]
    if current.history is not None:
        h = current.history
        values += [
            ("history_depth", f"{h['history_depth']}/{h['history_slots']}"),
            ("history_frames", str(h["history_frames"])),
            ("history_mb", f"{h['history_mb']:.1f}"),
            ("history_resets", str(h["history_resets"])),
        ]
    return HealthReport(level, message, tuple(values))


def history_short(history: dict | None) -> bool:
    """The last temporal output fused fewer previous keyframes than the stream could have given it."""
    return history is not None and history["history_depth"] < history["history_expected"]


class HealthMonitor:
    """The sliding window of snapshots behind /diagnostics: `update` once per watchdog tick."""

    def __init__(
        self,
        start: HealthSnapshot | None = None,
        window_s: float = DEFAULT_WINDOW_S,
        max_dropped_fraction: float = DEFAULT_MAX_DROPPED_FRACTION,
    ):
        self.window_s = float(window_s)
        self.max_dropped_fraction = float(max_dropped_fraction)
        self._history: deque[HealthSnapshot] = deque([start] if start is not None else [])

    def update(self, current: HealthSnapshot) -> HealthReport:
        """The report at `current`; the first snapshot ever given only starts the window (an all-zero report)."""
        if not self._history:
            self._history.append(current)
            return summarize_health(current, current, max_dropped_fraction=self.max_dropped_fraction)
        previous = self._history[-1]
        self._history.append(current)
        # Keep the newest snapshot at or before the window's start as its baseline.
        while len(self._history) > 2 and self._history[1].time_s <= current.time_s - self.window_s:
            self._history.popleft()
        window = list(self._history)
        latencies = tuple(ms for s in window[1:] for ms in s.recent_latencies_ms)
        stale_s = min(STALE_AFTER_S, self.window_s)
        stale = next((s for s in reversed(window[:-1]) if s.time_s <= current.time_s - stale_s), window[0])
        return summarize_health(current, previous, window[0], latencies, self.max_dropped_fraction, stale)
