"""Approximate-time six-camera set assembly and the latest-wins slot (pure, no ROS)."""

from __future__ import annotations

import threading

import pytest

from flashocc_ros.ros.sync import ApproximateTimeSync, LatestSlot, silent_streams

MS = 1_000_000
# Offsets (ms) of the six nuScenes cameras inside one sweep: spread ~45 ms, key camera not first.
OFFSETS_MS = [37, 0, 8, 45, 25, 17]
PERIOD_MS = 83


def feed_sweeps(sync, n_sweeps, start_ms=1_000_000, period_ms=PERIOD_MS, offsets=OFFSETS_MS, skip=()):
    """Feed frames in stamp order (as a bag replay does); return all emitted sets."""
    events = []
    for k in range(n_sweeps):
        for cam, off in enumerate(offsets):
            if (k, cam) in skip:
                continue
            events.append(((start_ms + k * period_ms + off) * MS, cam, k))
    events.sort()
    sets = []
    for stamp, cam, k in events:
        sets += sync.add(cam, stamp, payload=(k, cam)).sets
    return sets


def test_regular_rig_emits_every_sweep_with_matching_frames():
    sync = ApproximateTimeSync(6, 60 * MS, queue_size=4)
    sets = feed_sweeps(sync, 10)
    assert len(sets) == 10
    for k, s in enumerate(sets):
        assert [f.payload for f in s.frames] == [(k, cam) for cam in range(6)]
        assert s.stamp_ns == (1_000_000 + k * PERIOD_MS + OFFSETS_MS[0]) * MS
        assert s.spread_ns == 45 * MS
    assert sync.counters.sets_complete == 10 and sync.counters.sets_incomplete == 0


def test_set_emitted_when_last_camera_of_sweep_arrives_not_one_sweep_later():
    sync = ApproximateTimeSync(6, 60 * MS)
    feed_sweeps(sync, 3)  # learn the period
    base = 1_000_000 + 3 * PERIOD_MS
    order = sorted(range(6), key=lambda c: OFFSETS_MS[c])
    for i, cam in enumerate(order):
        sets = sync.add(cam, (base + OFFSETS_MS[cam]) * MS, payload=(3, cam)).sets
        assert len(sets) == (1 if i == 5 else 0)


def test_missing_camera_counts_incomplete_and_recovers():
    sync = ApproximateTimeSync(6, 60 * MS, queue_size=3)
    sets = feed_sweeps(sync, 8, skip={(k, 4) for k in range(2, 5)})  # CAM_BACK silent for 3 sweeps
    got = sorted(s.frames[0].payload[0] for s in sets)
    assert got == [0, 1, 5, 6, 7]
    assert sync.counters.sets_incomplete == 3


def test_spread_larger_than_max_is_not_a_set():
    sync = ApproximateTimeSync(6, 30 * MS)
    assert feed_sweeps(sync, 4) == []  # 45 ms sweeps never fit 30 ms
    assert sync.counters.sets_incomplete >= 1
    assert all(n <= sync.queue_size for n in sync.pending())


def test_queues_are_bounded():
    sync = ApproximateTimeSync(6, 60 * MS, queue_size=2)
    for k in range(50):
        sync.add(0, (1000 + k * 100) * MS, None)  # only the key camera publishes
    assert sync.pending() == [2, 0, 0, 0, 0, 0]
    assert sync.counters.sets_incomplete == 48


def test_duplicate_and_slightly_out_of_order_frames_are_dropped():
    sync = ApproximateTimeSync(6, 60 * MS)
    assert sync.add(1, 1000 * MS, None).dropped_reason == ""
    assert sync.add(1, 1000 * MS, None).dropped_reason == "duplicate"
    assert sync.add(1, 990 * MS, None).dropped_reason == "out_of_order"
    assert sync.counters.frames_duplicate == 1 and sync.counters.frames_out_of_order == 1


def test_time_going_backwards_resets_and_matches_the_new_timeline():
    sync = ApproximateTimeSync(6, 60 * MS)
    first = feed_sweeps(sync, 5, start_ms=5_000_000)
    assert len(first) == 5
    # Bag loop: the key camera's next frame jumps back 100 s (held: alone it could be a glitch), then a second
    # camera follows (a loop: reset); frames of the old timeline still in flight on another camera must not poison
    # the new timeline.
    r = sync.add(0, (5_000_000 - 100_000 + OFFSETS_MS[0]) * MS, payload=("new", 0))
    assert r.held and not r.reset
    r = sync.add(1, (5_000_000 - 100_000 + OFFSETS_MS[1]) * MS, payload=("new", 1))
    assert r.reset and sync.counters.resets == 1
    stale = sync.add(3, (5_000_000 + 5 * PERIOD_MS + OFFSETS_MS[3]) * MS, payload=("old", 3))
    assert stale.dropped_reason == "stale_after_reset"
    sets = feed_sweeps(sync, 3, start_ms=5_000_000 - 100_000)
    assert len(sets) >= 2
    assert all(f.payload[0] != "old" for s in sets for f in s.frames)
    assert sync.counters.resets == 1


def test_first_frames_without_period_use_spread_bound():
    sync = ApproximateTimeSync(6, 80 * MS)
    sets = []
    for cam in range(6):
        sets += sync.add(cam, 10_000 * MS, payload=cam).sets  # identical stamps (synthetic rig)
    assert len(sets) == 1 and sets[0].spread_ns == 0


def test_invalid_arguments():
    with pytest.raises(ValueError, match="max_spread_ns"):
        ApproximateTimeSync(6, 0)
    with pytest.raises(ValueError, match="queue_size"):
        ApproximateTimeSync(6, MS, queue_size=0)
    with pytest.raises(ValueError, match="stream 6"):
        ApproximateTimeSync(6, MS).add(6, 0, None)


def test_latest_slot_replaces_waiting_item_and_wakes_consumer():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.get(timeout=0.1) == 2 and slot.replaced == 1
    assert slot.get(timeout=0.01) is None
    got = []
    t = threading.Thread(target=lambda: got.append(slot.get(timeout=5)))
    t.start()
    slot.put(3)
    t.join(5)
    assert got == [3]
    slot.close()
    assert slot.get(timeout=5) is None


def test_stamp_lag_follows_message_time_and_resets_with_the_timeline():
    sync = ApproximateTimeSync(3, 60 * MS)
    assert sync.stamp_lag_ns(0) is None  # nothing yet
    sync.add(0, 1_000 * MS, "a", received=0.0)
    sync.add(1, 1_010 * MS, "b", received=5.0)  # same sweep, 5 s later in wall time (slow replay)
    assert sync.stamp_lag_ns(0) == 10 * MS and sync.stamp_lag_ns(1) == 0
    assert sync.stamp_lag_ns(2) == 10 * MS  # never sent: measured from the first stamp of any stream
    for k in range(1, 4):  # stream 2 stays silent while 0 and 1 go on
        sync.add(0, (1_000 + 500 * k) * MS, "a", received=5.0 + k)
        sync.add(1, (1_010 + 500 * k) * MS, "b", received=5.0 + k)
    assert sync.stamp_lag_ns(2) == 1_510 * MS and sync.stamp_lag_ns(0) == 10 * MS
    sync.add(0, 10 * MS, "a")  # time went backwards on two streams: new timeline
    sync.add(1, 20 * MS, "b")
    assert sync.stamp_lag_ns(1) == 0 and sync.stamp_lag_ns(0) == 10 * MS and sync.stamp_lag_ns(2) == 10 * MS


def test_silent_streams_needs_wall_and_message_time_behind():
    s = 1e9
    # Live: camera 2 stopped 3 s ago (wall) and is 3 s behind in stamps -> reported.
    assert silent_streams(10.0, [9.9, 9.95, 7.0], [0, 0, int(3 * s)], 1.0) == [2]
    # Slow replay: camera 2 last arrived 3 s ago (wall) but its data is only 50 ms behind -> not reported.
    assert silent_streams(10.0, [9.9, 9.95, 7.0], [0, 0, int(0.05 * s)], 1.0) == []
    # Never received: reported once the others have covered the timeout in message time, not before.
    assert silent_streams(10.0, [9.9, 9.95, None], [0, 0, int(2 * s)], 1.0) == [2]
    assert silent_streams(10.0, [9.9, 9.95, None], [0, 0, int(0.3 * s)], 1.0) == []
    # Everyone quiet (bag paused, end of data): nothing to report.
    assert silent_streams(10.0, [5.0, 5.0, 2.0], [0, 0, int(3 * s)], 1.0) == []


def _feed_with_glitch(sync, n_sweeps, glitch_sweep, glitch_cam, offset_ms, start_ms=1_000_000):
    """Feed sweeps in arrival order, one frame of `glitch_cam` in `glitch_sweep` stamped `offset_ms` off (a clock
    glitch: the frame arrives in its usual place but carries a wrong stamp). Returns (sets, results)."""
    events = []
    for k in range(n_sweeps):
        for cam, off in enumerate(OFFSETS_MS):
            events.append(((start_ms + k * PERIOD_MS + off) * MS, cam, k))
    events.sort()
    sets, results = [], []
    for stamp, cam, k in events:
        if (k, cam) == (glitch_sweep, glitch_cam):
            stamp += offset_ms * MS
        r = sync.add(cam, stamp, payload=(k, cam), received=stamp * 1e-9)
        results.append(r)
        sets += r.sets
    return sets, results


@pytest.mark.parametrize("offset_ms", [10_000, -10_000])
def test_a_single_frame_stamped_10_s_off_costs_only_its_own_set(offset_ms):
    """Issue 18 item 3: one camera frame stamped +-10 s off is an outlier, not a bag loop: only the set of that
    sweep is lost, the glitch is reported (camera and stamp offset), and no reset discards the other cameras."""
    sync = ApproximateTimeSync(6, 60 * MS, queue_size=4)
    sets, results = _feed_with_glitch(sync, 30, glitch_sweep=10, glitch_cam=4, offset_ms=offset_ms)
    sweeps = sorted(s.frames[0].payload[0] for s in sets)
    assert sweeps == [k for k in range(30) if k != 10], sweeps
    assert sync.counters.resets == 0 and sync.counters.frames_stale_after_reset == 0
    outliers = [o for r in results for o in r.outliers]
    assert len(outliers) == 1 and outliers[0].stream == 4
    assert outliers[0].offset_ns == pytest.approx(offset_ms * MS, abs=100 * MS)
    assert sync.counters.frames_outlier == 1
    # Every camera keeps publishing: none falls behind in message time.
    assert max(sync.stamp_lag_ns(i) for i in range(6)) < 100 * MS


def test_a_glitch_after_a_jump_forward_is_still_an_outlier():
    """A jump forward (a paused bag resumed, a clock set forward) must not teach the synchronizer a camera period
    as long as the jump: a glitch a few sweeps later is still caught and costs only its own set (it used to pass as
    on the timeline, then the camera's next frames looked like a loop: a reset and 16 sets lost)."""
    sync = ApproximateTimeSync(6, 60 * MS, queue_size=4)
    # One sweep (as right after a bag loop reset: no period learnt yet), then the jump forward.
    before, _ = _feed_with_glitch(sync, 1, glitch_sweep=-1, glitch_cam=0, offset_ms=0)
    after, results = _feed_with_glitch(sync, 12, glitch_sweep=2, glitch_cam=4, offset_ms=10_000, start_ms=1_400_000)
    assert len(before) == 1 and sync.counters.jumps_forward == 1
    assert sorted(s.frames[0].payload[0] for s in after) == [k for k in range(12) if k != 2]
    assert sync.counters.resets == 0 and sync.counters.frames_stale_after_reset == 0
    assert [o.stream for r in results for o in r.outliers] == [4]


def test_a_real_loop_resets_as_soon_as_a_second_camera_jumps_and_keeps_the_first_frames():
    sync = ApproximateTimeSync(6, 60 * MS, queue_size=4)
    assert len(feed_sweeps(sync, 5, start_ms=5_000_000)) == 5
    new_start = 5_000_000 - 100_000
    order = sorted(range(6), key=lambda c: OFFSETS_MS[c])
    first = sync.add(order[0], (new_start + OFFSETS_MS[order[0]]) * MS, payload=(0, order[0]))
    assert not first.reset and first.held  # one camera alone could be a glitch
    second = sync.add(order[1], (new_start + OFFSETS_MS[order[1]]) * MS, payload=(0, order[1]))
    assert second.reset and sync.counters.resets == 1  # two cameras agree: a loop
    sets = []
    for cam in order[2:]:
        sets += sync.add(cam, (new_start + OFFSETS_MS[cam]) * MS, payload=(0, cam)).sets
    # The first sweep of the new timeline is complete: the held frame of the first camera was not lost.
    assert len(sets) == 1 and [f.payload for f in sets[0].frames] == [(0, c) for c in range(6)]
    assert sync.counters.frames_outlier == 0


def test_one_camera_whose_clock_really_moved_is_followed_after_a_few_frames():
    sync = ApproximateTimeSync(2, 60 * MS)
    for k in range(5):
        sync.add(0, (1_000 + 100 * k) * MS, None)
        sync.add(1, (1_010 + 100 * k) * MS, None)
    results = [sync.add(1, (100 + 100 * k) * MS, None) for k in range(ApproximateTimeSync.CONFIRM_FRAMES)]
    assert [r.reset for r in results] == [False] * (ApproximateTimeSync.CONFIRM_FRAMES - 1) + [True]
    assert sync.counters.resets == 1 and sync.counters.frames_outlier == 0


def test_silent_camera_warnings_name_camera_topic_and_lag():
    from flashocc_ros.ros.sync import silent_camera_warnings

    s = 1_000_000_000
    cams = [("CAM_A", "/a"), ("CAM_B", "/b"), ("CAM_C", "/c")]
    got = silent_camera_warnings(10.0, cams, [9.9, 9.95, 7.0], [0, 0, int(3 * s)], 1.0, 4)
    assert got == [
        (
            2,
            "camera CAM_C (/c): silent for 3.0 s (3.0 s behind in message time) while other cameras publish; "
            "4 incomplete sets so far",
        )
    ]
    got = silent_camera_warnings(10.0, cams, [9.9, 9.95, None], [0, 0, int(2 * s)], 1.0, 0)
    assert got[0][1].startswith("camera CAM_C (/c): nothing received yet (2.0 s behind")
