"""Built-in transform tree (the /tf_static reader's core) and the rig calibration YAML (pure, no ROS)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import yaml

from flashocc_ros.config import CAMERA_NAMES, ConfigError
from flashocc_ros.tf_tree import (
    TransformError,
    TransformTree,
    load_calibration_file,
    quaternion_xyzw_to_matrix,
    rigid,
)

RIG = json.loads((Path(__file__).parent / "data" / "nuscenes_rig.json").read_text())["cameras"]


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
