"""Rig assembly without ROS (flashocc_ros/ros/rig.py): camera infos + image headers + a transform source -> the
RigCalibration, with the pending / unavailable / stale decisions, the retry policy and the pose tolerance."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest

from flashocc_ros.config import CAMERA_NAMES
from flashocc_ros.ros.messages import BadInput
from flashocc_ros.ros.rig import (
    POSE_TOLERANCE_LEVER_M,
    CalibrationPending,
    CalibrationTracker,
    EgoPosePending,
    ImageHeader,
    RigAssembler,
    Tf2BufferSource,
    TransformTreeSource,
    retry_while_pending,
)
from flashocc_ros.ros.tf_tree import CameraCalibration, ExtrapolationError, TransformError
from flashocc_ros.transforms import quaternion_xyzw_to_matrix, rigid

RIG = json.loads((Path(__file__).resolve().parents[1] / "data" / "nuscenes_rig.json").read_text())["cameras"]
W, H = 1600, 900
S = 1_000_000_000  # ns per second


def K(cam: str) -> np.ndarray:
    return np.asarray(RIG[cam]["K"], dtype=np.float64).reshape(3, 3)


def camera_to_ego(cam: str) -> np.ndarray:
    w, x, y, z = RIG[cam]["rotation_wxyz"]
    return rigid(quaternion_xyzw_to_matrix(x, y, z, w), RIG[cam]["translation"])


def record(parent, child, matrix, stamp_ns=0):
    t = matrix[:3, 3]
    # rotation about z only (enough for these tests): quaternion from the angle
    angle = np.arctan2(matrix[1, 0], matrix[0, 0])
    q = (0.0, 0.0, np.sin(angle / 2), np.cos(angle / 2))
    return NS(
        header=NS(frame_id=parent, stamp=NS(sec=stamp_ns // S, nanosec=stamp_ns % S)),
        child_frame_id=child,
        transform=NS(translation=NS(x=t[0], y=t[1], z=t[2]), rotation=NS(x=q[0], y=q[1], z=q[2], w=q[3])),
    )


def static_camera_record(cam: str):
    """A TransformStamped-like record of camera -> base_link (full rotation, from the nuScenes rig)."""
    w, x, y, z = RIG[cam]["rotation_wxyz"]
    t = RIG[cam]["translation"]
    return NS(
        header=NS(frame_id="base_link", stamp=NS(sec=0, nanosec=0)),
        child_frame_id=cam,
        transform=NS(translation=NS(x=t[0], y=t[1], z=t[2]), rotation=NS(x=x, y=y, z=z, w=w)),
    )


def pose(x: float, yaw: float = 0.0) -> np.ndarray:
    return rigid(quaternion_xyzw_to_matrix(0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)), (x, 2.0, 0.0))


CAMERAS = [(c, f"/{c}/image/compressed", f"/{c}/camera_info") for c in CAMERA_NAMES]


def headers(stamp_ns=10 * S, size=(W, H), frame=True):
    return [ImageHeader(size[0], size[1], c if frame else "", stamp_ns + i * 1000) for i, c in enumerate(CAMERA_NAMES)]


def assembler(world="map", tree=None, warnings=None, **kwargs) -> RigAssembler:
    if tree is None:
        tree = TransformTreeSource()
        for cam in CAMERA_NAMES:
            tree.add(static_camera_record(cam), static=True)
    rig = RigAssembler(
        CAMERAS,
        "base_link",
        world,
        tree,
        tf_timeout_s=1.0,
        warn=(lambda key, text: warnings.append(text)) if warnings is not None else None,
        **kwargs,
    )
    for i, cam in enumerate(CAMERA_NAMES):
        rig.set_camera_info(i, K(cam), (W, H), cam)
    return rig


# --------------------------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------------------------


def test_camera_infos_and_static_tf_give_K_and_camera_to_ego():
    calib = assembler(world="").calibration(headers())
    np.testing.assert_array_equal(calib.intrinsics, np.stack([K(c) for c in CAMERA_NAMES]))
    np.testing.assert_allclose(calib.sensor2ego, np.stack([camera_to_ego(c) for c in CAMERA_NAMES]), atol=1e-12)
    assert calib.image_hw == (H, W) and calib.ego2global is None


def test_missing_or_rejected_camera_info_is_pending_and_named():
    rig = RigAssembler(CAMERAS, "base_link", "", TransformTreeSource())
    with pytest.raises(CalibrationPending, match=r"no CameraInfo received yet on /CAM_FRONT_LEFT/camera_info"):
        rig.calibration(headers())
    rig = assembler(world="")
    rig.reject_camera_info(2, "/CAM_FRONT_RIGHT/camera_info: K is all zeros (uncalibrated camera)")
    assert rig.camera_info_errors() == ("/CAM_FRONT_RIGHT/camera_info: K is all zeros (uncalibrated camera)",)
    with pytest.raises(CalibrationPending, match="K is all zeros"):
        rig.calibration(headers())


def test_image_sizes_must_match_camera_info_and_each_other():
    rig = assembler(world="")
    with pytest.raises(BadInput, match=r"/CAM_FRONT_LEFT/image/compressed: image is 800x450 but its CameraInfo says"):
        rig.calibration(headers(size=(800, 450)))
    for i, cam in enumerate(CAMERA_NAMES):
        rig.set_camera_info(i, K(cam), (W, H) if i else (800, 450), cam)
    images = [ImageHeader(800, 450, CAMERA_NAMES[0], 0)] + headers()[1:]
    with pytest.raises(BadInput, match=r"the six images must have one size, got CAM_FRONT_LEFT 800x450"):
        rig.calibration(images)


def test_frame_id_falls_back_to_camera_info_and_empty_both_is_bad_input():
    rig = assembler(world="")
    calib = rig.calibration(headers(frame=False))  # image frame empty: the CameraInfo's frame is used
    np.testing.assert_allclose(calib.sensor2ego[0], camera_to_ego(CAMERA_NAMES[0]), atol=1e-12)
    rig.set_camera_info(0, K(CAMERA_NAMES[0]), (W, H), "")
    with pytest.raises(BadInput, match="header.frame_id is empty and so is its CameraInfo's"):
        rig.calibration(headers(frame=False))


def test_missing_and_stale_camera_transforms_are_pending():
    tree = TransformTreeSource()
    rig = assembler(world="", tree=tree)
    with pytest.raises(CalibrationPending, match=r"no transform base_link <- CAM_FRONT_LEFT"):
        rig.calibration(headers())
    # A camera mounted on a dynamic frame: its transform is 2 s older than the image (> tf_timeout_s 1 s).
    tree.add(record("base_link", "mount", np.eye(4), 8 * S), static=False)
    for cam in CAMERA_NAMES:
        on_mount = static_camera_record(cam)
        on_mount.header.frame_id = "mount"
        tree.add(on_mount, static=True)
    with pytest.raises(CalibrationPending, match=r"stale transform base_link <- CAM_FRONT_LEFT: 2\.00 s older"):
        rig.calibration(headers(stamp_ns=10 * S))
    tree.add(record("base_link", "mount", np.eye(4), 9_500_000_000), static=False)
    rig.calibration(headers(stamp_ns=10 * S))  # 0.5 s old: fine


def test_fixed_calibration_needs_no_camera_info_or_tf():
    fixed = {c: CameraCalibration(K(c), camera_to_ego(c), (H, W)) for c in RIG}
    rig = RigAssembler(CAMERAS, "base_link", "", None, fixed=fixed)
    calib = rig.calibration(headers())
    np.testing.assert_allclose(calib.sensor2ego, np.stack([camera_to_ego(c) for c in CAMERA_NAMES]), atol=1e-12)
    with pytest.raises(BadInput, match="image is 800x450 but its CameraInfo says 1600x900"):
        rig.calibration(headers(size=(800, 450)))


# --------------------------------------------------------------------------------------------------------------
# Ego poses: exact, pending, unavailable
# --------------------------------------------------------------------------------------------------------------


def test_ego_pose_at_each_camera_stamp_exact_and_interpolated():
    warnings: list[str] = []
    rig = assembler(warnings=warnings)
    tree = rig.transforms
    stamps = [h.stamp_ns for h in headers()]
    for i, stamp in enumerate(stamps):
        tree.add(record("map", "base_link", pose(float(i)), stamp), static=False)
    calib = rig.calibration(headers())
    np.testing.assert_allclose(calib.ego2global, np.stack([pose(float(i)) for i in range(6)]), atol=1e-12)
    assert warnings == []


def test_ego_pose_missing_world_newer_and_older_stamps():
    warnings: list[str] = []
    rig = assembler(warnings=warnings)
    # No map frame at all: one shared ego pose, a warning saying compensation is off.
    assert rig.calibration(headers()).ego2global is None
    assert len(warnings) == 1 and "tf.world_frame 'map': no map <- base_link transform" in warnings[0]
    assert "compensation is OFF" in warnings[0]
    # The newest pose is older than the images: the pose may still come.
    rig.transforms.add(record("map", "base_link", pose(0.0), 9 * S), static=False)
    with pytest.raises(EgoPosePending, match=r"no map <- base_link pose yet at 10\.000000 s"):
        rig.calibration(headers())
    # compensate=False: no lookup at all.
    assert rig.calibration(headers(), compensate=False).ego2global is None
    # Images older than the history: never, so unavailable (warning, shared pose).
    assert rig.calibration(headers(stamp_ns=5 * S)).ego2global is None
    assert "older than the oldest" in warnings[-1] and "compensation is OFF" in warnings[-1]


def test_no_world_frame_means_no_ego_poses():
    rig = assembler(world="")
    rig.transforms.add(record("map", "base_link", pose(0.0), 10 * S), static=False)
    assert rig.calibration(headers()).ego2global is None


# --------------------------------------------------------------------------------------------------------------
# tf2_ros buffer adapter (tf2's exceptions and stamps, without ROS)
# --------------------------------------------------------------------------------------------------------------


class FakeTf2:
    class LookupException(Exception):
        pass

    class ConnectivityException(Exception):
        pass

    class ExtrapolationException(Exception):
        pass


class FakeBuffer:
    def __init__(self, result=None, error=None):
        self.result, self.error, self.calls = result, error, []

    def lookup_transform(self, target, source, time):
        self.calls.append((target, source, time))
        if self.error is not None:
            raise self.error
        return self.result


def test_tf2_buffer_adapter_translates_exceptions_and_stamps():
    def make_time(ns):
        return ("latest",) if ns is None else ("at", ns)

    rec = record("base_link", "cam", pose(1.0, 0.3), 0)
    found = Tf2BufferSource(FakeBuffer(rec), FakeTf2, make_time).lookup("base_link", "cam")
    np.testing.assert_allclose(found.matrix, pose(1.0, 0.3), atol=1e-12)
    assert found.oldest_dynamic_ns is None  # stamp 0: a static chain
    buf = FakeBuffer(record("map", "base_link", pose(0.0), 7 * S))
    assert Tf2BufferSource(buf, FakeTf2, make_time).lookup("map", "base_link", 7 * S).oldest_dynamic_ns == 7 * S
    assert buf.calls == [("map", "base_link", ("at", 7 * S))]

    past = FakeTf2.ExtrapolationException("Lookup would require extrapolation into the past")
    future = FakeTf2.ExtrapolationException("Lookup would require extrapolation into the future")
    with pytest.raises(ExtrapolationError) as exc:
        Tf2BufferSource(FakeBuffer(error=past), FakeTf2, make_time).lookup("map", "base_link", 1)
    assert exc.value.future is False
    with pytest.raises(ExtrapolationError) as exc:
        Tf2BufferSource(FakeBuffer(error=future), FakeTf2, make_time).lookup("map", "base_link", 1)
    assert exc.value.future is True
    for error in (FakeTf2.LookupException("frame map does not exist"), FakeTf2.ConnectivityException("no path")):
        with pytest.raises(TransformError) as exc:
            Tf2BufferSource(FakeBuffer(error=error), FakeTf2, make_time).lookup("map", "base_link", 1)
        assert not isinstance(exc.value, ExtrapolationError)

    # Through the assembler: a past extrapolation is "unavailable" (shared pose), a future one "pending".
    warnings: list[str] = []
    rig = assembler(tree=Tf2BufferSource(FakeBuffer(error=past), FakeTf2, make_time), warnings=warnings)
    rig.fixed = {c: CameraCalibration(K(c), camera_to_ego(c), (H, W)) for c in RIG}
    assert rig.calibration(headers()).ego2global is None and "into the past" in warnings[0]
    rig.transforms = Tf2BufferSource(FakeBuffer(error=future), FakeTf2, make_time)
    with pytest.raises(EgoPosePending):
        rig.calibration(headers())


# --------------------------------------------------------------------------------------------------------------
# Retry policy
# --------------------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, dt):
        self.now += dt


def test_retry_waits_for_pending_calibration_until_it_arrives():
    clock, calls = FakeClock(), []

    def attempt(compensate):
        calls.append(compensate)
        if len(calls) < 3:
            raise CalibrationPending("no CameraInfo yet")
        return "done"

    assert retry_while_pending(attempt, 1.0, lambda: False, None, clock, clock.sleep) == "done"
    assert calls == [True, True, True] and 0 < clock.now < 1.0


def test_retry_gives_up_at_the_deadline_or_when_superseded():
    clock = FakeClock()

    def pending(compensate):
        raise CalibrationPending("stale transform")

    with pytest.raises(CalibrationPending):
        retry_while_pending(pending, 0.1, lambda: False, None, clock, clock.sleep)
    assert clock.now == pytest.approx(0.1, abs=0.021)
    clock = FakeClock()
    with pytest.raises(CalibrationPending):
        retry_while_pending(pending, 10.0, lambda: True, None, clock, clock.sleep)
    assert clock.now == 0.0  # a newer set is waiting: no wait at all


def test_late_ego_pose_processes_the_set_without_compensation():
    clock, calls, late = FakeClock(), [], []

    def attempt(compensate):
        calls.append(compensate)
        if compensate:
            raise EgoPosePending("no map <- base_link pose yet")
        return "uncompensated"

    assert retry_while_pending(attempt, 0.1, lambda: False, late.append, clock, clock.sleep) == "uncompensated"
    assert calls[-1] is False and all(calls[:-1]) and len(late) == 1 and clock.now >= 0.1
    with pytest.raises(EgoPosePending):  # superseded: dropped, not processed uncompensated
        retry_while_pending(attempt, 0.1, lambda: True, late.append, clock, clock.sleep)


# --------------------------------------------------------------------------------------------------------------
# Pose tolerance
# --------------------------------------------------------------------------------------------------------------


def test_tracker_tells_rig_changes_pose_changes_and_reuse_within_tolerance():
    base = assembler(world="").calibration(headers())
    applied = []

    def apply(calib):
        applied.append(calib)
        return True

    def with_poses(dx, dyaw=0.0):
        base.ego2global = np.stack([pose(dx + i, dyaw) for i in range(6)])
        return type(base)(base.intrinsics, base.sensor2ego, base.ego2global, base.image_hw)

    tracker = CalibrationTracker()
    assert tracker.update(with_poses(0.0), 0.5, apply) == "rig"
    assert tracker.update(with_poses(0.1), 0.0, apply) == "poses"  # tolerance 0: exact
    # Every camera moved by the same 0.2 m, relative to the key camera nothing moved: reused.
    assert tracker.update(with_poses(0.3), 0.5, apply) == "reused" and len(applied) == 2
    # A key-frame relative change: cameras 1.. rotate around the key ego by 0.02 rad -> 0.02 * 50 m > 0.5 m.
    moved = with_poses(0.3)
    moved.ego2global[1:] = np.stack([pose(0.3 + i, 0.02) for i in range(1, 6)])
    assert 0.02 * POSE_TOLERANCE_LEVER_M > 0.5
    assert tracker.update(moved, 0.5, apply) == "poses"
    assert tracker.update(moved, 0.0, lambda c: False) == "unchanged"
    other_k = type(base)(base.intrinsics * 1.01, base.sensor2ego, moved.ego2global, base.image_hw)
    other_k.intrinsics[:, 2, 2] = 1.0
    assert tracker.update(other_k, 10.0, apply) == "rig"  # a rig change is never within a tolerance


# --------------------------------------------------------------------------------------------------------------
# Temporal variants: the ego poses are required
# --------------------------------------------------------------------------------------------------------------


def test_required_ego_poses_skip_the_set_with_a_clear_reason_instead_of_sharing_one_pose():
    from flashocc_ros.config import ConfigError
    from flashocc_ros.ros.rig import TEMPORAL_NEEDS_POSES, EgoPosesRequired

    with pytest.raises(ConfigError, match=r"tf.world_frame is empty: the temporal variants need the tf.world_frame"):
        assembler(world="", require_ego_poses=True)
    warnings: list[str] = []
    rig = assembler(warnings=warnings, require_ego_poses=True)
    # No map frame at all: pending (the pose may still be published), named, never one shared ego pose.
    with pytest.raises(EgoPosesRequired, match="no map <- base_link transform") as exc:
        rig.calibration(headers())
    assert isinstance(exc.value, CalibrationPending) and TEMPORAL_NEEDS_POSES in str(exc.value)
    assert "compensation is OFF" not in str(exc.value) and warnings == []
    rig.transforms.add(record("map", "base_link", pose(0.0), 9 * S), static=False)
    rig.transforms.add(record("map", "base_link", pose(1.0), 11 * S), static=False)
    assert rig.calibration(headers()).ego2global.shape == (6, 4, 4)  # available: used as ever
    with pytest.raises(EgoPosesRequired, match="older than the oldest"):  # images older than the pose history
        rig.calibration(headers(stamp_ns=5 * S))
    with pytest.raises(EgoPosesRequired, match="without its ego poses"):
        rig.calibration(headers(), compensate=False)


def test_retry_without_a_late_pose_handler_drops_the_set_when_the_pose_does_not_come():
    from flashocc_ros.ros.rig import EgoPosesRequired

    clock, calls = FakeClock(), []

    def attempt(compensate):
        calls.append(compensate)
        raise EgoPosePending("no map <- base_link pose yet at 10.000000 s")

    with pytest.raises(EgoPosesRequired, match=r"pose yet at 10\.000000 s after waiting 0\.10 s \(sync.tf_timeout_s\)"):
        retry_while_pending(attempt, 0.1, lambda: False, None, clock, clock.sleep)
    assert all(calls) and clock.now >= 0.1  # never attempted without compensation
