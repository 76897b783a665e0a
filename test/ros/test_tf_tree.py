"""Built-in transform tree (the /tf_static reader's core) and the rig calibration YAML (pure, no ROS)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import yaml

from flashocc_ros.config import CAMERA_NAMES, ConfigError
from flashocc_ros.ros.tf_tree import (
    ExtrapolationError,
    TransformError,
    TransformTree,
    load_calibration_file,
    slerp_xyzw,
)
from flashocc_ros.transforms import quaternion_xyzw_to_matrix, rigid

RIG = json.loads((Path(__file__).resolve().parents[1] / "data" / "nuscenes_rig.json").read_text())["cameras"]


def record(parent, child, t, q_xyzw, sec=0, nanosec=0):
    return NS(
        header=NS(frame_id=parent, stamp=NS(sec=sec, nanosec=nanosec)),
        child_frame_id=child,
        transform=NS(
            translation=NS(x=t[0], y=t[1], z=t[2]), rotation=NS(x=q_xyzw[0], y=q_xyzw[1], z=q_xyzw[2], w=q_xyzw[3])
        ),
    )


def rot_z(deg):
    a = np.radians(deg) / 2
    return (0.0, 0.0, np.sin(a), np.cos(a))


def test_quaternion_matches_known_rotation_and_rejects_zero():
    np.testing.assert_allclose(quaternion_xyzw_to_matrix(*rot_z(90)), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    with pytest.raises(ValueError, match="invalid quaternion"):
        quaternion_xyzw_to_matrix(0, 0, 0, 0)
    with pytest.raises(ValueError, match="invalid quaternion"):
        quaternion_xyzw_to_matrix(float("nan"), 0, 0, 1)


def test_chain_composition_equals_matrix_product():
    tree = TransformTree()
    # base_link -> camera_mount -> CAM_FRONT_optical (two static hops), plus a sibling branch.
    tree.add(record("base_link", "camera_mount", (1.0, 0.0, 1.5), rot_z(30)), static=True)
    tree.add(record("/camera_mount", "cam_optical", (0.1, -0.2, 0.0), (-0.5, 0.5, -0.5, 0.5)), static=True)
    tree.add(record("base_link", "lidar", (0.0, 0.0, 1.8), rot_z(-90)), static=True)
    mount = rigid(quaternion_xyzw_to_matrix(*rot_z(30)), (1.0, 0.0, 1.5))
    optical = rigid(quaternion_xyzw_to_matrix(-0.5, 0.5, -0.5, 0.5), (0.1, -0.2, 0.0))
    lidar = rigid(quaternion_xyzw_to_matrix(*rot_z(-90)), (0.0, 0.0, 1.8))

    got = tree.lookup("base_link", "cam_optical")
    np.testing.assert_allclose(got.matrix, mount @ optical, atol=1e-12)
    assert got.oldest_dynamic_ns is None
    np.testing.assert_allclose(tree.lookup("cam_optical", "base_link").matrix, np.linalg.inv(mount @ optical))
    # Across branches: lidar <- camera = inv(lidar) @ mount @ optical.
    np.testing.assert_allclose(
        tree.lookup("lidar", "cam_optical").matrix, np.linalg.inv(lidar) @ mount @ optical, atol=1e-12
    )
    np.testing.assert_allclose(tree.lookup("lidar", "lidar").matrix, np.eye(4))


def test_dynamic_edges_report_their_stamp_and_latest_value_wins():
    tree = TransformTree()
    tree.add(record("odom", "base_link", (0, 0, 0), rot_z(0), sec=5), static=False)
    tree.add(record("odom", "base_link", (2, 0, 0), rot_z(0), sec=7, nanosec=5), static=False)
    tree.add(record("base_link", "cam", (1, 0, 0), rot_z(0)), static=True)
    got = tree.lookup("odom", "cam")
    assert got.oldest_dynamic_ns == 7_000_000_005
    np.testing.assert_allclose(got.matrix[:3, 3], [3, 0, 0])


def test_missing_and_disconnected_frames_have_clear_errors():
    tree = TransformTree()
    tree.add(record("base_link", "cam_a", (0, 0, 0), rot_z(0)), static=True)
    tree.add(record("world", "cam_b", (0, 0, 0), rot_z(0)), static=True)
    with pytest.raises(TransformError, match="'CAM_X' does not exist.*known frames: base_link, cam_a, cam_b, world"):
        tree.lookup("base_link", "CAM_X")
    with pytest.raises(TransformError, match="not connected"):
        tree.lookup("base_link", "cam_b")
    with pytest.raises(ValueError, match="empty frame id"):
        tree.add(record("", "x", (0, 0, 0), rot_z(0)), static=True)


def pose(t, yaw_deg):
    return rigid(quaternion_xyzw_to_matrix(*rot_z(yaw_deg)), t)


def ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def test_lookup_at_a_stored_stamp_is_that_exact_transform():
    tree = TransformTree()
    q = (0.01, -0.02, 0.3, 0.95)  # not normalised on purpose
    for k in range(5):
        sec, nanosec = divmod(ns(100 + 0.05 * k), 1_000_000_000)
        tree.add(record("map", "base_link", (k * 0.7, -k * 0.1, 0.0), q, sec, nanosec), static=False)
    tree.add(record("base_link", "cam", (1.0, 0.5, 1.5), rot_z(45)), static=True)
    got = tree.lookup("map", "base_link", ns(100.1))
    np.testing.assert_array_equal(got.matrix, rigid(quaternion_xyzw_to_matrix(*q), (1.4, -0.2, 0.0)))
    assert got.oldest_dynamic_ns == ns(100.1)
    # The static camera edge composes on top, and the stamp-less lookup still gives the newest pose.
    cam = tree.lookup("map", "cam", ns(100.1)).matrix
    np.testing.assert_allclose(cam, got.matrix @ pose((1.0, 0.5, 1.5), 45), atol=1e-12)
    np.testing.assert_allclose(tree.lookup("map", "base_link").matrix[:3, 3], (2.8, -0.4, 0.0))


def test_lookup_between_stamps_interpolates_slerp_rotation_and_lerp_translation():
    tree = TransformTree()
    tree.add(record("map", "base_link", (10.0, 0.0, 1.0), rot_z(10), sec=50), static=False)
    tree.add(record("map", "base_link", (14.0, 2.0, 1.0), rot_z(50), sec=51), static=False)
    got = tree.lookup("map", "base_link", ns(50.25))
    np.testing.assert_allclose(got.matrix, pose((11.0, 0.5, 1.0), 20), atol=1e-12)
    assert got.oldest_dynamic_ns == ns(50)
    # Inverse direction (base_link <- map) at the same time.
    np.testing.assert_allclose(tree.lookup("base_link", "map", ns(50.75)).matrix, np.linalg.inv(pose((13, 1.5, 1), 40)))
    # Two dynamic edges on one path (map -> odom -> base_link), each interpolated at the time.
    tree.add(record("odom", "base_link", (0, 0, 0), rot_z(0), sec=50), static=False)
    tree.add(record("odom", "base_link", (2, 0, 0), rot_z(0), sec=52), static=False)
    tree.add(record("map", "odom", (0, 0, 0), rot_z(90), sec=49), static=False)
    tree.add(record("map", "odom", (0, 0, 0), rot_z(90), sec=53), static=False)
    np.testing.assert_allclose(tree.lookup("map", "base_link", ns(51)).matrix, pose((0, 1, 0), 90), atol=1e-12)


def test_slerp_takes_the_short_arc_and_is_exact_at_the_ends():
    q0, q1 = np.array(rot_z(170)), np.array(rot_z(-170))  # 20 degrees apart across +-180
    mid = slerp_xyzw(q0, q1, 0.5)
    np.testing.assert_allclose(quaternion_xyzw_to_matrix(*mid), quaternion_xyzw_to_matrix(*rot_z(180)), atol=1e-12)
    np.testing.assert_allclose(slerp_xyzw(q0, -q1, 0.5), mid, atol=1e-12)  # q and -q are one rotation
    np.testing.assert_allclose(slerp_xyzw(q0, q1, 0.0), q0, atol=1e-15)
    # Nearly identical rotations (normalised-lerp branch) stay unit and in between.
    a, b = np.array(rot_z(1.0)), np.array(rot_z(1.001))
    m = slerp_xyzw(a, b, 0.5)
    assert np.linalg.norm(m) == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(m, rot_z(1.0005), atol=1e-12)


def test_lookup_outside_the_history_says_future_or_past():
    tree = TransformTree()
    tree.add(record("map", "base_link", (0, 0, 0), rot_z(0), sec=10), static=False)
    tree.add(record("map", "base_link", (1, 0, 0), rot_z(0), sec=11), static=False)
    with pytest.raises(ExtrapolationError, match=r"map <- base_link at 11.500000 s .*newer than the newest") as e:
        tree.lookup("map", "base_link", ns(11.5))
    assert e.value.future
    with pytest.raises(ExtrapolationError, match=r"older than the oldest") as e:
        tree.lookup("map", "base_link", ns(9.0))
    assert not e.value.future
    # A frame that was never received is a plain TransformError (not an extrapolation).
    with pytest.raises(TransformError, match="'world' does not exist") as e:
        tree.lookup("world", "base_link", ns(10.5))
    assert not isinstance(e.value, ExtrapolationError)
    assert tree.has_frame("map") and tree.has_frame("/base_link") and not tree.has_frame("world")


def test_history_is_bounded_sorted_and_restarts_when_time_jumps_back():
    tree = TransformTree(cache_time_s=2.0)
    for k in range(100):  # 10 s at 10 Hz
        sec, nanosec = divmod(ns(1000 + 0.1 * k), 1_000_000_000)
        tree.add(record("map", "base_link", (k, 0, 0), rot_z(0), sec, nanosec), static=False)
    stamps = tree.history_stamps("base_link")
    assert stamps[0] >= ns(1009.9 - 2.0) and stamps[-1] == ns(1009.9) and len(stamps) == 21
    # Out of order inside the window: inserted in place; same stamp twice: replaced.
    tree.add(record("map", "base_link", (99, 0, 0), rot_z(0), 1009, ns(0.85)), static=False)
    tree.add(record("map", "base_link", (7, 0, 0), rot_z(0), 1009, ns(0.9)), static=False)
    stamps = tree.history_stamps("base_link")
    assert stamps == sorted(stamps) and len(stamps) == 22
    np.testing.assert_allclose(tree.lookup("map", "base_link", ns(1009.9)).matrix[:3, 3], (7, 0, 0))
    np.testing.assert_allclose(tree.lookup("map", "base_link", ns(1009.85)).matrix[:3, 3], (99, 0, 0))
    # A bag loop: far older than the window -> the history restarts from the new timeline.
    tree.add(record("map", "base_link", (0, 0, 0), rot_z(0), sec=1000), static=False)
    assert tree.history_stamps("base_link") == [ns(1000)]
    np.testing.assert_allclose(tree.lookup("map", "base_link").matrix, np.eye(4))


def write_calibration(path, **overrides):
    cams = {}
    for cam in CAMERA_NAMES:
        c = RIG[cam]
        cams[cam] = {"K": c["K"], "translation": c["translation"], "rotation_wxyz": c["rotation_wxyz"]}
    data = {"image_size": [1600, 900], "cameras": cams}
    for key, value in overrides.items():
        cam, field = key.split("__")
        data["cameras"][cam][field] = value
    path.write_text(yaml.safe_dump(data))
    return path


def test_calibration_file_roundtrip(tmp_path):
    calib = load_calibration_file(write_calibration(tmp_path / "rig.yaml"))
    assert list(calib) == list(CAMERA_NAMES)
    front = calib["CAM_FRONT"]
    assert front.image_hw == (900, 1600)
    np.testing.assert_allclose(front.intrinsics.ravel(), RIG["CAM_FRONT"]["K"])
    np.testing.assert_allclose(front.sensor2ego[:3, 3], RIG["CAM_FRONT"]["translation"])
    # The optical z axis of CAM_FRONT points forward (ego +x).
    np.testing.assert_allclose(front.sensor2ego[:3, 2], [1, 0, 0], atol=0.02)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"CAM_BACK__K": [0] * 9}, r"cameras.CAM_BACK.K: K has non-positive focal length"),
        ({"CAM_BACK__K": [1, 2, 3]}, r"cameras.CAM_BACK.K: expected 9 numbers"),
        ({"CAM_FRONT__translation": [1, 2]}, r"cameras.CAM_FRONT.translation"),
        ({"CAM_FRONT__rotation_wxyz": [0, 0, 0, 0]}, r"cameras.CAM_FRONT rotation: invalid quaternion"),
    ],
)
def test_calibration_file_errors_name_camera_and_key(tmp_path, override, message):
    path = write_calibration(tmp_path / "rig.yaml", **override)
    with pytest.raises(ConfigError, match=message):
        load_calibration_file(path)


def test_calibration_file_missing_camera(tmp_path):
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump({"image_size": [1600, 900], "cameras": {}}))
    with pytest.raises(ConfigError, match="cameras.CAM_FRONT_LEFT: missing"):
        load_calibration_file(path)
