"""Approximate-time assembly of six-camera sets, and a latest-wins hand-off slot (no ROS import).

Written here rather than using message_filters because message_filters is not on PyPI (the pip-only ROS install
has no ApproximateTimeSynchronizer) and the node needs counters, a max spread and bag-loop resets it lacks.

Matching rule: a set holds one frame per stream and is chosen to minimise the spread (latest - earliest stamp)
among the queued frames, subject to spread <= max_spread. A set is emitted as soon as no future frame could
improve it: every stream has either already received a frame at or after the set's latest stamp, or its next
frame is expected (from its measured period) after that stamp. So a regular 12 Hz rig is emitted when the last
camera of the sweep arrives, without waiting for the next sweep.

Jumps in time: a frame off the rig's timeline (more than `max_spread` older than its stream's previous frame, or
more than `jump_threshold_ns()` newer than the newest frame of any stream) is *held*, not used: alone it may be a
glitch. It is confirmed as a real jump when a second stream jumps the same way (a bag loop or clock change: all
cameras jump), or when its own stream goes on from it for CONFIRM_FRAMES frames (only that camera's clock moved);
a backward jump then resets the state and the held frames start the new timeline. When the stream's next frame
continues the old timeline instead, the held frame was a single outlier: it is dropped and reported
(`AddResult.outliers`), which costs at most the set of that sweep.
"""

from __future__ import annotations

import collections
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

NS_PER_MS = 1_000_000


@dataclass
class Frame:
    """One received image: stream index, header stamp (ns), opaque payload, monotonic receipt time (s)."""

    stream: int
    stamp_ns: int
    payload: Any
    received: float


@dataclass
class CameraSet:
    """One complete set, frames in stream order; `stamp_ns` is the key stream's stamp."""

    frames: list[Frame]
    key_index: int = 0

    @property
    def stamp_ns(self) -> int:
        return self.frames[self.key_index].stamp_ns

    @property
    def spread_ns(self) -> int:
        stamps = [f.stamp_ns for f in self.frames]
        return max(stamps) - min(stamps)

    @property
    def completed_at(self) -> float:
        """Monotonic time at which the last frame of the set was received."""
        return max(f.received for f in self.frames)


@dataclass
class SyncCounters:
    sets_complete: int = 0
    sets_incomplete: int = 0  # key frames discarded without a complete set (camera missing / outside spread)
    frames_out_of_order: int = 0  # a stream's stamp slightly older than its previous one: dropped
    frames_duplicate: int = 0  # same stamp twice on one stream: dropped
    frames_stale_after_reset: int = 0  # old-timeline frames still in flight after a reset: dropped
    frames_outlier: int = 0  # a single frame stamped off the timeline (clock glitch): dropped
    resets: int = 0  # time went backwards (bag loop, sim-time restart): state cleared
    jumps_forward: int = 0  # time jumped forward on the rig (confirmed by two streams): followed, no reset


@dataclass(frozen=True)
class Outlier:
    """A frame dropped as a single glitch: its stream, stamp and offset from the rig's newest stamp on arrival."""

    stream: int
    stamp_ns: int
    offset_ns: int


@dataclass
class AddResult:
    """What one `add` produced: complete sets (oldest first) and whether time went backwards."""

    sets: list[CameraSet] = field(default_factory=list)
    reset: bool = False
    dropped_reason: str = ""  # "", "duplicate", "out_of_order", "stale_after_reset"
    held: bool = False  # the frame is off the timeline and held until a jump is confirmed or it proves an outlier
    outliers: list[Outlier] = field(default_factory=list)  # held frames now dropped as single glitches


class _Stream:
    def __init__(self, queue_size: int):
        self.queue: collections.deque[Frame] = collections.deque()
        self.queue_size = queue_size
        self.last_stamp_ns: int | None = None
        self.gaps: collections.deque[int] = collections.deque(maxlen=8)
        self.last_received: float | None = None
        # After a reset triggered by another stream: stamps >= this belong to the old timeline (in flight).
        self.stale_from_ns: int | None = None
        self.stale_dropped = 0
        # Frames off the timeline, held until a jump is confirmed (or dropped as outliers).
        self.held: list[Frame] = []
        self.held_backwards = False
        self.held_ref_ns = 0  # the old timeline's stamp they jumped from
        self.held_offset_ns = 0  # offset of the first held frame from the rig's newest stamp
        # After a jump forward the next gap spans the jump: it is not a camera period (it would inflate the jump
        # threshold so much that a later glitch passes as on the timeline).
        self.skip_next_gap = False

    def period_ns(self) -> int | None:
        return int(statistics.median(self.gaps)) if self.gaps else None


class ApproximateTimeSync:
    """Assembles sets of `num_streams` frames whose stamps lie within `max_spread_ns`.

    Not thread-safe: the caller serialises `add` (the node calls it from its executor thread under a lock).
    """

    # A stream's next frame is assumed to come no sooner than this fraction of its median period.
    PERIOD_MARGIN = 0.75
    # Give up waiting for in-flight old-timeline frames after this many of them on one stream.
    MAX_STALE_FRAMES = 16
    # A stream going on from a held (off-timeline) frame this many frames in a row confirms the jump on its own.
    CONFIRM_FRAMES = 3
    # A frame newer than the rig's newest stamp by more than max(MIN_JUMP_NS, JUMP_PERIODS * the longest measured
    # period) is off the timeline.
    MIN_JUMP_NS = 1_000_000_000
    JUMP_PERIODS = 4

    def __init__(self, num_streams: int, max_spread_ns: int, queue_size: int = 4, key_index: int = 0):
        if num_streams < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        if max_spread_ns <= 0:
            raise ValueError(f"max_spread_ns must be > 0, got {max_spread_ns}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not 0 <= key_index < num_streams:
            raise ValueError(f"key_index {key_index} outside [0, {num_streams})")
        self.num_streams = num_streams
        self.max_spread_ns = int(max_spread_ns)
        self.queue_size = queue_size
        self.key_index = key_index
        self.counters = SyncCounters()
        self._streams = [_Stream(queue_size) for _ in range(num_streams)]
        self._first_stamp_ns: int | None = None  # first accepted stamp of any stream since the last reset

    # ----------------------------------------------------------------------------------------------------------
    def set_max_spread_ns(self, max_spread_ns: int) -> None:
        if max_spread_ns <= 0:
            raise ValueError(f"max_spread_ns must be > 0, got {max_spread_ns}")
        self.max_spread_ns = int(max_spread_ns)

    def last_received(self, stream: int) -> float | None:
        """Monotonic receipt time of the stream's last accepted frame (None: nothing yet)."""
        return self._streams[stream].last_received

    def stamp_lag_ns(self, stream: int) -> int | None:
        """How far, in message time, the newest accepted stamp of any stream is ahead of this stream's last one
        (for a stream with nothing since the last reset: ahead of the first stamp of any stream). None before any
        frame arrived. Unlike receipt times this does not grow when a bag is replayed slower than real time."""
        stamps = [s.last_stamp_ns for s in self._streams if s.last_stamp_ns is not None]
        if not stamps:
            return None
        own = self._streams[stream].last_stamp_ns
        return max(stamps) - (own if own is not None else self._first_stamp_ns)

    def pending(self) -> list[int]:
        """Number of queued frames per stream."""
        return [len(s.queue) for s in self._streams]

    def reset(self) -> None:
        """Forget all queued frames and timing history (counters are kept)."""
        self._first_stamp_ns = None
        for s in self._streams:
            s.queue.clear()
            s.last_stamp_ns = None
            s.gaps.clear()
            s.stale_from_ns = None
            s.stale_dropped = 0
            s.held = []

    def jump_threshold_ns(self) -> int:
        """How far ahead of the rig's newest stamp a frame must be to count as a jump forward."""
        periods = [p for p in (s.period_ns() for s in self._streams) if p]
        return max(self.MIN_JUMP_NS, self.JUMP_PERIODS * max(periods, default=0))

    # ----------------------------------------------------------------------------------------------------------
    def add(self, stream: int, stamp_ns: int, payload: Any, received: float | None = None) -> AddResult:
        """Queue one frame; return the sets it completed (usually none or one)."""
        if not 0 <= stream < self.num_streams:
            raise ValueError(f"stream {stream} outside [0, {self.num_streams})")
        received = time.monotonic() if received is None else received
        result = AddResult()
        s = self._streams[stream]
        frame = Frame(stream, stamp_ns, payload, received)

        if s.stale_from_ns is not None:
            if stamp_ns >= s.stale_from_ns and s.stale_dropped < self.MAX_STALE_FRAMES:
                s.stale_dropped += 1
                s.last_received = received  # the camera is publishing (old data still in flight)
                self.counters.frames_stale_after_reset += 1
                result.dropped_reason = "stale_after_reset"
                return result
            s.stale_from_ns = None
            s.stale_dropped = 0

        if s.held:
            last_held = s.held[-1].stamp_ns
            if abs(stamp_ns - last_held) < abs(stamp_ns - s.held_ref_ns):  # goes on from the held frames
                if stamp_ns <= last_held:
                    self.counters.frames_out_of_order += 1
                    result.dropped_reason = "out_of_order"
                    return result
                s.held.append(frame)
                if len(s.held) >= self.CONFIRM_FRAMES:
                    self._confirm_jump([stream], result)
                else:
                    result.held = True
                return result
            # Back on the old timeline: the held frames were glitches.
            for f in s.held:
                result.outliers.append(Outlier(stream, f.stamp_ns, s.held_offset_ns + f.stamp_ns - s.held[0].stamp_ns))
            self.counters.frames_outlier += len(s.held)
            s.held = []

        newest = max((o.last_stamp_ns for o in self._streams if o.last_stamp_ns is not None), default=None)
        backwards = s.last_stamp_ns is not None and stamp_ns < s.last_stamp_ns - self.max_spread_ns
        ahead = newest is not None and stamp_ns > newest + self.jump_threshold_ns()
        if backwards or ahead:
            s.held = [frame]
            s.held_backwards = backwards
            s.held_ref_ns = s.last_stamp_ns if backwards else newest
            s.held_offset_ns = stamp_ns - newest
            partners = [
                i
                for i, o in enumerate(self._streams)
                if i != stream
                and o.held
                and o.held_backwards == backwards
                and 2 * abs(o.held[0].stamp_ns - stamp_ns) < abs(s.held_offset_ns)
            ]
            if partners or self.num_streams == 1:
                self._confirm_jump([stream, *partners], result)
            else:
                result.held = True
            return result

        self._accept(frame, result)
        return result

    def _accept(self, frame: Frame, result: AddResult) -> None:
        """Queue a frame on the timeline and emit the sets it completes."""
        stream, stamp_ns, received = frame.stream, frame.stamp_ns, frame.received
        s = self._streams[stream]
        if s.last_stamp_ns is not None:
            if stamp_ns == s.last_stamp_ns:
                self.counters.frames_duplicate += 1
                result.dropped_reason = "duplicate"
                return result
            if stamp_ns < s.last_stamp_ns:
                self.counters.frames_out_of_order += 1
                result.dropped_reason = "out_of_order"
                return
            elif s.skip_next_gap:
                s.skip_next_gap = False
            else:
                s.gaps.append(stamp_ns - s.last_stamp_ns)

        s.last_stamp_ns = stamp_ns
        s.last_received = received
        if self._first_stamp_ns is None:
            self._first_stamp_ns = stamp_ns
        s.queue.append(frame)
        while len(s.queue) > self.queue_size:
            s.queue.popleft()
            if stream == self.key_index:
                self.counters.sets_incomplete += 1
        result.sets += self._emit_ready()

    # ----------------------------------------------------------------------------------------------------------
    def _confirm_jump(self, streams: list[int], result: AddResult) -> None:
        """The held frames of `streams` are a real jump: reset for a backward one, then queue them in stamp order."""
        frames = sorted((f for i in streams for f in self._streams[i].held), key=lambda f: f.stamp_ns)
        if self._streams[streams[0]].held_backwards:
            self._reset_for_backwards_jump(streams)
            result.reset = True
        else:
            self.counters.jumps_forward += 1
            for i in streams:
                self._streams[i].held = []
            for s in self._streams:  # every stream's next gap spans the jump
                s.skip_next_gap = s.last_stamp_ns is not None
        for f in frames:
            self._accept(f, result)

    def _reset_for_backwards_jump(self, streams: list[int]) -> None:
        self.counters.resets += 1
        old_last = [s.last_stamp_ns for s in self._streams]
        self.reset()
        for i, s in enumerate(self._streams):
            if i not in streams and old_last[i] is not None:
                # Frames of other streams continuing the old timeline may still be in flight: drop them until the
                # stream, too, jumps back (or after MAX_STALE_FRAMES, in case only one stream's clock moved).
                s.stale_from_ns = old_last[i] - self.max_spread_ns

    def _best_set_for_key(self, key: Frame) -> list[Frame] | None:
        """Minimum-spread choice of one frame per stream containing `key`, or None if no choice fits max_spread."""
        lo_candidates = {key.stamp_ns}
        for i, s in enumerate(self._streams):
            if i == self.key_index:
                continue
            for f in s.queue:
                if key.stamp_ns - self.max_spread_ns <= f.stamp_ns <= key.stamp_ns:
                    lo_candidates.add(f.stamp_ns)
        best: tuple[int, list[Frame]] | None = None
        for lo in sorted(lo_candidates):
            chosen: list[Frame] = []
            for i, s in enumerate(self._streams):
                if i == self.key_index:
                    chosen.append(key)
                    continue
                frame = next((f for f in s.queue if f.stamp_ns >= lo), None)
                if frame is None:
                    break
                chosen.append(frame)
            else:
                spread = max(f.stamp_ns for f in chosen) - lo
                if spread <= self.max_spread_ns and (best is None or spread < best[0]):
                    best = (spread, chosen)
        return None if best is None else best[1]

    def _is_final(self, chosen: list[Frame]) -> bool:
        """True if no frame still to come can enter the set's window [min, max] and improve it."""
        hi = max(f.stamp_ns for f in chosen)
        for s in self._streams:
            last = s.last_stamp_ns
            if last is None:
                return False
            if last >= hi:
                continue
            period = s.period_ns()
            next_earliest = last + int(self.PERIOD_MARGIN * period) if period else last + self.max_spread_ns
            if next_earliest <= hi:
                return False
        return True

    def _is_hopeless(self, key: Frame, chosen: list[Frame] | None) -> bool:
        """True if no frame still to come can complete a set with `key` (streams arrive in stamp order)."""
        lo, hi = key.stamp_ns - self.max_spread_ns, key.stamp_ns + self.max_spread_ns
        all_past = True
        for s in self._streams:
            past = s.last_stamp_ns is not None and s.last_stamp_ns > hi
            all_past = all_past and past
            if past and not any(lo <= f.stamp_ns <= hi for f in s.queue):
                return True
        return chosen is None and all_past

    def _emit_ready(self) -> list[CameraSet]:
        out: list[CameraSet] = []
        key_queue = self._streams[self.key_index].queue
        while key_queue and self._is_hopeless(key_queue[0], self._best_set_for_key(key_queue[0])):
            key_queue.popleft()
            self.counters.sets_incomplete += 1
        progressed = True
        while progressed and key_queue:
            progressed = False
            for key in list(key_queue):
                chosen = self._best_set_for_key(key)
                if chosen is None or not self._is_final(chosen):
                    continue
                # Emit; older key frames can no longer complete (their partners are consumed or older).
                while key_queue and key_queue[0] is not key:
                    key_queue.popleft()
                    self.counters.sets_incomplete += 1
                for i, frame in enumerate(chosen):
                    q = self._streams[i].queue
                    while q and q[0].stamp_ns <= frame.stamp_ns:
                        q.popleft()
                self.counters.sets_complete += 1
                out.append(CameraSet(chosen, self.key_index))
                progressed = True
                break
        return out


T = TypeVar("T")


class LatestSlot(Generic[T]):
    """A one-element hand-off between the subscription callbacks and the worker: a newer item replaces a
    waiting one (latest wins), so the worker always processes the freshest set and latency stays bounded."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.replaced = 0

    def put(self, item: T) -> bool:
        """Store `item`; True if it replaced one that was still waiting."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.replaced += 1
            self._item = item
            self._cond.notify()
            return replaced

    def get(self, timeout: float | None = None) -> T | None:
        """Take the waiting item, blocking up to `timeout` s; None on timeout or when closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def has_item(self) -> bool:
        """True when a newer item is waiting (the worker may drop what it holds)."""
        with self._cond:
            return self._item is not None

    def clear(self) -> bool:
        with self._cond:
            had = self._item is not None
            self._item = None
            return had

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def silent_streams(
    now: float, last_received: Sequence[float | None], stamp_lag_ns: Sequence[int | None], timeout_s: float
) -> list[int]:
    """Streams to report as silent while others publish: nothing received for `timeout_s` of wall time while some
    other stream was, *and* behind the newest stamp by at least `timeout_s` of message time (a stream that never
    sent anything: the newest stamp is that far past the first stamp of any stream). The second condition keeps a
    slow bag replay (one sweep's cameras arriving seconds apart in wall time) from being reported; a camera that
    really stopped falls behind in both."""
    recent = [t is not None and now - t < timeout_s for t in last_received]
    if not any(recent):
        return []
    timeout_ns = timeout_s * 1e9
    return [i for i, ok in enumerate(recent) if not ok and (stamp_lag_ns[i] is None or stamp_lag_ns[i] >= timeout_ns)]


def silent_camera_warnings(
    now: float,
    cameras: Sequence[tuple[str, str]],
    last_received: Sequence[float | None],
    stamp_lag_ns: Sequence[int | None],
    timeout_s: float,
    sets_incomplete: int,
) -> list[tuple[int, str]]:
    """(index, warning) for every camera (name, topic) that `silent_streams` reports."""
    out = []
    for i in silent_streams(now, last_received, stamp_lag_ns, timeout_s):
        name, topic = cameras[i]
        last, lag = last_received[i], stamp_lag_ns[i]
        since = "nothing received yet" if last is None else f"silent for {now - last:.1f} s"
        behind = "" if lag is None else f" ({lag * 1e-9:.1f} s behind in message time)"
        text = f"camera {name} ({topic}): {since}{behind} while other cameras publish"
        out.append((i, f"{text}; {sets_incomplete} incomplete sets so far"))
    return out
