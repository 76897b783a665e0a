"""Temporal history rules (no network): keyframe-spaced selection by time from a 12 Hz stream, the first-frame
rule for missing slots, resets on time going back or gaps (one warning each), bounded storage, input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flashocc_ros.config import get_variant, load_config
from flashocc_ros.inference.pipeline import PipelineError
from flashocc_ros.inference.temporal import FrameHistory, FrameRecord, TemporalPipeline
from flashocc_ros.network.geometry import reference_rig


def record(stamp: float) -> FrameRecord:
    eye = np.broadcast_to(np.eye(4, dtype=np.float32), (6, 4, 4)).copy()
    return FrameRecord(stamp, torch.zeros(6, 2, 1, 1), eye, eye)


def test_history_slots_are_the_frames_nearest_the_keyframe_times_of_a_12hz_stream():
    warnings = []
    hist = FrameHistory(8, 0.5, 0.1, warn=warnings.append)
    stamps = [i / 12.0 for i in range(80)]  # 6.6 s at 12 Hz
    for t in stamps:
        hist.check_stamp(t)
        hist.add(record(t))
    now = stamps[-1]
    slots = hist.select(now + 1 / 12.0)
    assert all(s is not None for s in slots)
    for k, rec in enumerate(slots, start=1):
        target = now + 1 / 12.0 - 0.5 * k
        nearest = min(stamps, key=lambda s: abs(s - target))
        assert rec.stamp == nearest and abs(rec.stamp - target) <= 1 / 24.0 + 1e-9
    assert warnings == []
    # bounded: only what a future slot can still use is kept (8 x 0.5 s + tolerance back from the newest)
    assert all(r.stamp >= now - 4.1 - 1e-9 for r in hist._records)
    assert len(hist) == sum(s >= now - 4.1 - 1e-9 for s in stamps)


def test_missing_or_too_far_slots_are_none_and_storage_is_capped():
    hist = FrameHistory(3, 0.5, 0.1, max_entries=3)
    assert hist.select(0.0) == [None, None, None]  # first frame of a stream: no history
    for t in (0.0, 0.5, 1.5):  # 1.0 dropped
        hist.add(record(t))
    slots = hist.select(1.5 + 0.5)
    assert [s.stamp if s else None for s in slots] == [1.5, None, 0.5]
    slots = hist.select(2.14)  # 0.14 s off the keyframe grid: beyond the 0.1 s tolerance
    assert slots[0] is None
    for t in (1.6, 1.7, 1.8):
        hist.add(record(t))
    assert [r.stamp for r in hist._records] == [1.6, 1.7, 1.8]


@pytest.mark.parametrize(
    "stamps, reason",
    [((0.0, 0.5, 0.4), "time went back from 0.500 s to 0.400 s"), ((0.0, 0.5, 1.2), "gap of 0.700 s")],
)
def test_time_going_back_or_a_gap_resets_the_history_with_one_warning(stamps, reason):
    warnings = []
    hist = FrameHistory(1, 0.5, 0.1, warn=warnings.append)
    for t in stamps:
        hist.check_stamp(t)
        hist.add(record(t))
    assert len(warnings) == 1 and reason in warnings[0] and "2 stored frame(s) dropped" in warnings[0]
    assert [r.stamp for r in hist._records] == [stamps[-1]] and hist.resets == 1
    hist.check_stamp(stamps[-1] + 0.5)
    assert len(warnings) == 1


def test_bad_history_settings_are_rejected():
    with pytest.raises(ValueError, match=r"tolerance_s: 0.3 must be in \(0, 0.25\)"):
        FrameHistory(1, 0.5, 0.3)
    with pytest.raises(ValueError, match="max_entries: 2 is below the 8 history slots"):
        FrameHistory(8, 0.5, 0.1, max_entries=2)
    with pytest.raises(PipelineError, match="stamp: nan is not a finite time"):
        FrameHistory(1).check_stamp(float("nan"))


class _Stub(nn.Module):
    """Stands in for the network where only the pipeline's input checks are exercised (nothing is inferred)."""

    def __init__(self, variant):
        super().__init__()
        self.variant = variant
        self.p = nn.Parameter(torch.zeros(1))


def test_temporal_pipeline_input_errors_name_the_problem():
    p2 = "panoptic-flashocc-r50-depth4d-pano"
    with pytest.raises(PipelineError, match="single-frame variant: use OccupancyPipeline"):
        TemporalPipeline(load_config(overrides={"model": {"variant": "flashocc-r50"}}), model=_Stub(None))
    with pytest.raises(PipelineError, match="the temporal variants run on the pytorch backend only"):
        TemporalPipeline(load_config(overrides={"model": {"variant": p2, "backend": "onnxruntime"}}))
    pipe = TemporalPipeline(load_config(overrides={"model": {"variant": p2}}), model=_Stub(get_variant(p2)))
    rig = reference_rig()
    rig.ego2global = None
    imgs = np.zeros((6, 3, 256, 704), np.float32)
    with pytest.raises(PipelineError, match="need the ego poses"):
        pipe.run(imgs, rig, 0.0)
    with pytest.raises(PipelineError, match=r"expected 6 images .* got 5"):
        pipe.run([np.zeros((900, 1600, 3), np.uint8)] * 5, reference_rig(), 0.0)


def test_single_frame_pipeline_refuses_temporal_variants():
    from flashocc_ros.inference.pipeline import OccupancyPipeline

    cfg = load_config(overrides={"model": {"variant": "panoptic-flashocc-r50-depth4d-longterm8f-pano"}})
    with pytest.raises(PipelineError, match="temporal variant \\(9 frames\\): use flashocc_ros.inference.temporal"):
        OccupancyPipeline(cfg, runner=object())


class _CountingModel(_Stub):
    """Tiny stand-in with the temporal network's stage interface; counts DepthNet passes (no real network)."""

    def __init__(self, variant):
        super().__init__(variant)
        self.depth_calls = 0

    def encode_frame(self, img):
        return img[:, :1, :16, :44].clone()

    def depth_frame(self, feat, mlp):
        self.depth_calls += 1
        depth = torch.ones(6, 88, 16, 44) / 88
        return depth, depth, feat.expand(6, 80, 16, 44)

    def bev_frame(self, depth, context, pool):
        bev = torch.zeros(1, 80, 200, 200)
        return bev, bev

    def fuse(self, frame_bevs):
        return torch.cat(list(frame_bevs), dim=1)

    def head(self, fused):
        return {
            "occ_logits": torch.zeros(1, 200, 200, 16, 18),
            "heatmap": torch.full((1, 10, 200, 200), -10.0),
            "reg": torch.zeros(1, 2, 200, 200),
            "height": torch.zeros(1, 1, 200, 200),
        }


def _moving_rig(stamp: float):
    rig = reference_rig()
    yaw = 0.05 * stamp
    m = np.eye(4)
    m[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    m[0, 3] = 8.0 * stamp
    rig.ego2global = np.stack([e @ m for e in rig.ego2global])
    return rig


@pytest.mark.parametrize(
    "moving, reuse, passes",
    [
        (False, False, [1, 1, 1]),  # same camera-aware input: the history's DepthNet output is reused (exact)
        (True, False, [1, 2, 2]),  # the current pose changes it: re-run for the previous frame (official)
        (True, True, [1, 1, 1]),  # opt-in approximation: one DepthNet pass per frame
    ],
)
def test_history_depth_is_recomputed_only_when_the_current_pose_changes_it(moving, reuse, passes):
    p2 = "panoptic-flashocc-r50-depth4d-pano"
    model = _CountingModel(get_variant(p2))
    cfg = load_config(overrides={"model": {"variant": p2}})
    pipe = TemporalPipeline(cfg, model=model, reuse_history_depth=reuse)
    imgs = np.zeros((6, 3, 256, 704), np.float32)
    got = []
    for stamp in (0.0, 0.5, 1.0):
        before = model.depth_calls
        pipe.run(imgs, _moving_rig(stamp) if moving else reference_rig(), stamp)
        got.append(model.depth_calls - before)
    assert got == passes
    assert pipe.encoder_passes == 3 and pipe.last_history_depth == 1
    status = pipe.status()
    assert status["history_depth"] == 1 and status["history_slots"] == 1 and status["history_resets"] == 0
    assert status["history_frames"] == 2 and status["history_mb"] > 0  # t = 0.0 is older than 0.5 s + tolerance


def test_a_bag_loop_resets_the_pipeline_history_once():
    p2 = "panoptic-flashocc-r50-depth4d-pano"
    warnings = []
    pipe = TemporalPipeline(
        load_config(overrides={"model": {"variant": p2}}), model=_CountingModel(get_variant(p2)), warn=warnings.append
    )
    imgs = np.zeros((6, 3, 256, 704), np.float32)
    for stamp in (10.0, 10.5, 11.0, 10.0, 10.5):  # the bag starts over after 11.0
        pipe.run(imgs, _moving_rig(stamp), stamp)
    assert len(warnings) == 1 and "time went back from 11.000 s to 10.000 s" in warnings[0]
    assert pipe.last_history_depth == 1 and pipe.status()["history_resets"] == 1


def test_explicit_history_leaves_the_stream_alone_and_counts_its_frames():
    """encode / run_with_history (flashocc-predict's entry): the caller's previous frames are used, one encoder pass
    per call, the streaming history is neither read nor changed (no reset even when stamps go back)."""
    p9 = "panoptic-flashocc-r50-depth4d-longterm8f-pano"
    model = _CountingModel(get_variant(p9))
    warnings = []
    pipe = TemporalPipeline(load_config(overrides={"model": {"variant": p9}}), model=model, warn=warnings.append)
    imgs = np.zeros((6, 3, 256, 704), np.float32)
    first = pipe.encode(imgs, _moving_rig(0.0), 0.0)
    _, second = pipe.run_with_history(imgs, _moving_rig(0.5), [first] + [None] * 7, 0.5)
    assert pipe.last_history_depth == 1 and isinstance(second, FrameRecord)
    _, third = pipe.run_with_history(imgs, _moving_rig(0.2), [second, first] + [first] * 6, 0.2)  # back in time
    assert pipe.last_history_depth == 8
    assert pipe.encoder_passes == 3 and len(pipe.history) == 0 and pipe.history.resets == 0 and not warnings
    with pytest.raises(PipelineError, match=r"takes 8 previous frame\(s\), got 2"):
        pipe.run_with_history(imgs, _moving_rig(1.0), [third, second])
    with pytest.raises(PipelineError, match="expected FrameRecord or None entries"):
        pipe.run_with_history(imgs, _moving_rig(1.0), ["frame"] * 8)


def test_expected_depth_counts_the_slots_the_stream_could_fill_and_a_gap_does_not_restart_the_stream():
    warnings = []
    hist = FrameHistory(2, 0.5, 0.1, warn=warnings.append)
    assert hist.expected(5.0) == 0  # nothing seen yet
    for t in (10.0, 10.4):
        hist.check_stamp(t)
        hist.add(record(t))
    # slot k's keyframe time t - 0.5 k must lie at or after the stream's first frame (within the tolerance)
    assert [hist.expected(t) for t in (10.3, 10.45, 10.85, 10.95, 20.0)] == [0, 1, 1, 2, 2]
    hist.check_stamp(11.2)  # a gap (node slower than the keyframe interval): history dropped, stream goes on
    assert len(warnings) == 1 and len(hist) == 0 and hist.expected(11.2) == 2
    hist.add(record(11.2))
    hist.check_stamp(10.0)  # time went back (bag loop): a new stream
    assert len(warnings) == 2 and hist.expected(10.0) == 0


class _RecordingModel(_CountingModel):
    """_CountingModel that keeps the network input of each encoder pass."""

    def __init__(self, variant):
        super().__init__(variant)
        self.inputs = []

    def encode_frame(self, img):
        self.inputs.append(img.clone())
        return super().encode_frame(img)


def test_jpeg_entry_point_uses_the_single_frame_pipelines_decode_and_preprocessing():
    import simplejpeg

    from flashocc_ros.network.preprocess import decode_jpeg, preprocess_images, preprocess_jpeg

    p2 = "panoptic-flashocc-r50-depth4d-pano"
    model = _RecordingModel(get_variant(p2))
    pipe = TemporalPipeline(load_config(overrides={"model": {"variant": p2}}), model=model)
    rig = reference_rig()
    rng = np.random.default_rng(3)
    rgb = [rng.integers(0, 256, (900, 1600, 3), dtype=np.uint8) for _ in range(6)]
    jpegs = [simplejpeg.encode_jpeg(a, quality=90, colorspace="RGB") for a in rgb]
    decoded = [decode_jpeg(j) for j in jpegs]
    pipe.run_jpeg(jpegs, rig, 0.0, exact=True)  # exact: Pillow decode + the official preprocessing
    pipe.run(decoded, rig, 0.5)  # RGB: the official preprocessing
    result = pipe.run_jpeg(jpegs, rig, 1.0)  # fast path, as OccupancyPipeline.run_jpeg's default
    want = preprocess_images(decoded)
    np.testing.assert_array_equal(model.inputs[0].numpy(), want)
    np.testing.assert_array_equal(model.inputs[1].numpy(), want)
    np.testing.assert_array_equal(model.inputs[2].numpy(), np.stack([preprocess_jpeg(j) for j in jpegs]))
    assert set(result.timings_ms) >= {"decode", "preprocess", "inference", "postprocess"}
    assert result.timings_ms["decode"] > 0
    small = [simplejpeg.encode_jpeg(a[:450, :800].copy(), colorspace="RGB") for a in rgb]
    with pytest.raises(PipelineError, match=r"images\[0\] \(CAM_FRONT_LEFT\): size 800x450 differs from the calib"):
        pipe.run_jpeg(small, rig, 1.5)
    with pytest.raises(PipelineError, match=r"jpegs\[2\] \(CAM_FRONT_RIGHT\): cannot decode JPEG"):
        pipe.run_jpeg(jpegs[:2] + [b"\xff\xd8 not a jpeg"] + jpegs[3:], rig, 1.5)
    assert pipe.status() == {
        "history_depth": 1,
        "history_slots": 1,
        "history_expected": 1,
        "history_frames": 2,
        "history_mb": pipe.status()["history_mb"],
        "history_resets": 0,
    }
    pipe.reset()
    assert pipe.status()["history_frames"] == 0
    pipe.close()


def test_history_settings_come_from_the_config_and_are_range_checked():
    from flashocc_ros.config import ConfigError

    p9 = "panoptic-flashocc-r50-depth4d-longterm8f-pano"
    cfg = load_config(overrides={"model": {"variant": p9}, "temporal": {"history_tolerance_s": 0.05}})
    pipe = TemporalPipeline(cfg, model=_Stub(get_variant(p9)))
    assert (pipe.history.tolerance_s, pipe.history.max_entries, pipe.history.slots) == (0.05, 64, 8)
    with pytest.raises(ConfigError, match=r"temporal.history_tolerance_s: 0.25 is outside \(0, 0.25\)"):
        load_config(overrides={"temporal": {"history_tolerance_s": 0.25}})
    with pytest.raises(ConfigError, match="temporal.history_max_frames: 4 is below the 8 history slots of"):
        load_config(overrides={"model": {"variant": p9}, "temporal": {"history_max_frames": 4}})
    load_config(overrides={"temporal": {"history_max_frames": 4}})  # single-frame variants ignore it


def test_the_node_gets_a_temporal_pipeline_for_temporal_variants(monkeypatch):
    import flashocc_ros.network.loading
    from flashocc_ros.inference.temporal import create_pipeline

    p2 = "panoptic-flashocc-r50-depth4d-pano"
    monkeypatch.setattr(
        flashocc_ros.network.loading, "load_model", lambda variant, *a, **k: _Stub(get_variant(variant))
    )
    warnings = []
    pipe = create_pipeline(load_config(overrides={"model": {"variant": p2, "device": "cpu"}}), warn=warnings.append)
    assert isinstance(pipe, TemporalPipeline) and pipe.backend_name == "pytorch" and str(pipe.device) == "cpu"
    pipe.history.add(record(1.0))
    pipe.history.check_stamp(0.5)
    assert len(warnings) == 1 and "temporal history reset: time went back" in warnings[0]
