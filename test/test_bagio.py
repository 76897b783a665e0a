"""bagio: typestore with our messages (same type hashes as the rosidl build), numpy helpers, readers, joins."""

from __future__ import annotations

import array
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from flashocc_ros import bagio
from flashocc_ros.config import CLASS_NAMES, FREE_INDEX, OCC_GRID


def rosidl_type_hashes() -> dict[str, str]:
    prefix = Path(os.environ.get("AMENT_PREFIX_PATH", sys.prefix).split(os.pathsep)[0])
    folder = prefix / "share" / "flashocc_ros" / "msg"
    if not folder.is_dir():
        pytest.skip(f"interfaces not built into {prefix}")
    hashes = {}
    for path in folder.glob("*.json"):
        for entry in json.loads(path.read_text())["type_hashes"]:
            hashes[entry["type_name"]] = entry["hash_string"]
    return hashes


@pytest.mark.parametrize("distro", ["jazzy", "kilted"])
def test_registered_types_hash_like_the_rosidl_build(distro):
    store = bagio.make_typestore(distro)
    built = rosidl_type_hashes()
    for name in bagio.OUR_MESSAGES:
        msgtype = f"flashocc_ros/msg/{name}"
        assert store.hash_rihs01(msgtype) == built[msgtype], msgtype
    assert bagio.TF_MESSAGE in store.types and bagio.CLOCK in store.types


def test_unknown_distro_and_storage_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown ROS distro 'noetic'"):
        bagio.make_typestore("noetic")
    with pytest.raises(ValueError, match="unknown storage 'rosbag1'"):
        bagio.open_writer(tmp_path / "b", storage="rosbag1")


def test_topic_names_follow_the_node_configuration():
    from flashocc_ros.config import CameraConfig

    cfg = CameraConfig()
    assert bagio.image_topic("CAM_FRONT") == cfg.image_topic.format(camera="CAM_FRONT")
    assert bagio.camera_info_topic("CAM_BACK") == cfg.info_topic.format(camera="CAM_BACK")
    assert bagio.EGO_FRAME == "base_link" and bagio.sensor_frame("CAM_FRONT") == "CAM_FRONT"


def test_stamps_are_exact_microseconds_times_1000():
    us = 1_533_151_603_547_590
    ns = bagio.ns_from_us(us)
    assert ns == 1_533_151_603_547_590_000
    make = bagio.MessageFactory()
    t = make.time(ns)
    assert (t.sec, t.nanosec) == (1_533_151_603, 547_590_000) and bagio.stamp_ns(t) == ns


def random_grids(seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 18, OCC_GRID.shape, dtype=np.uint8)
    return (
        labels,
        (rng.random(OCC_GRID.shape) < 0.5).astype(np.uint8),
        (rng.random(OCC_GRID.shape) < 0.3).astype(np.uint8),
    )


def test_semantic_occupancy_round_trip_through_cdr():
    store = bagio.make_typestore()
    make = bagio.MessageFactory(store)
    labels, cam, lidar = random_grids(1)
    msg = make.semantic_occupancy(123_000_456, labels, mask_camera=cam, mask_lidar=lidar, source="ground_truth")
    raw = bagio.serialize(store, msg, bagio.SEMANTIC_OCCUPANCY)
    assert len(raw) % 4 == 0
    back = bagio.occupancy_from_msg(store.deserialize_cdr(raw, bagio.SEMANTIC_OCCUPANCY))
    assert back.stamp_ns == 123_000_456 and back.frame_id == "base_link" and back.source == "ground_truth"
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_array_equal(back.mask_camera, cam)
    np.testing.assert_array_equal(back.mask_lidar, lidar)
    # layout: labels[(ix * size_y + iy) * size_z + iz]
    assert msg.labels[(3 * 200 + 7) * 16 + 5] == labels[3, 7, 5]
    assert list(msg.class_names) == list(CLASS_NAMES) and msg.free_index == FREE_INDEX

    pred = bagio.occupancy_from_msg(make.semantic_occupancy(1, labels, source="flashocc-r50-M0"))
    assert pred.mask_camera is None and pred.mask_lidar is None


def test_bad_grids_are_named():
    make = bagio.MessageFactory()
    with pytest.raises(ValueError, match=r"labels: shape \(200, 200\)"):
        make.semantic_occupancy(0, np.zeros((200, 200), np.uint8))
    msg = make.semantic_occupancy(0, np.zeros(OCC_GRID.shape, np.uint8))
    msg.labels = msg.labels[:-1]
    with pytest.raises(ValueError, match="labels has 639999 entries"):
        bagio.occupancy_from_msg(msg)
    msg.size_z = 8
    with pytest.raises(ValueError, match=r"size \(200, 200, 8\)"):
        bagio.occupancy_from_msg(msg)


@pytest.mark.ros
def test_rclpy_reads_our_padded_cdr_and_the_helpers_read_rclpy_messages():
    from rclpy.serialization import deserialize_message, serialize_message

    from flashocc_ros.msg import PanopticOccupancy, SampleInfo, SemanticOccupancy

    store = bagio.make_typestore()
    make = bagio.MessageFactory(store)
    labels, cam, lidar = random_grids(2)
    raw = bagio.serialize(store, make.semantic_occupancy(5, labels, mask_camera=cam), bagio.SEMANTIC_OCCUPANCY)
    rc = deserialize_message(raw, SemanticOccupancy)
    grid = bagio.occupancy_from_msg(rc)
    np.testing.assert_array_equal(grid.labels, labels)
    np.testing.assert_array_equal(grid.mask_camera, cam)
    assert grid.mask_lidar is None

    info = make.sample_info(7, "tok", "scene-0103", "stok", 2)
    rc_info = deserialize_message(bagio.serialize(store, info, bagio.SAMPLE_INFO), SampleInfo)
    assert bagio.sample_from_msg(rc_info) == bagio.SampleRecord(7, "tok", "scene-0103", "stok", 2, {})

    pano = PanopticOccupancy()
    pano.semantic = rc
    ids = np.arange(OCC_GRID.num_voxels, dtype=np.uint16) % 40
    pano.panoptic = array.array("H", ids.tobytes())
    back = store.deserialize_cdr(serialize_message(pano), bagio.PANOPTIC_OCCUPANCY)  # rclpy bytes -> rosbags
    sem, ids_back = bagio.panoptic_from_msg(back)
    np.testing.assert_array_equal(sem.labels, labels)
    np.testing.assert_array_equal(ids_back.ravel(), ids.astype(np.int32))


def test_lidar_records_and_pointcloud():
    rows = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [-1.5, 0.25, 9.0, 100.0, 31.0]], np.float32)
    store = bagio.make_typestore()
    msg = bagio.MessageFactory(store).pointcloud(10, "LIDAR_TOP", rows)
    back = store.deserialize_cdr(bagio.serialize(store, msg, bagio.POINT_CLOUD2), bagio.POINT_CLOUD2)
    rec = bagio.pointcloud_to_records(back)
    assert [f.name for f in back.fields] == ["x", "y", "z", "intensity", "ring"] and back.point_step == 20
    np.testing.assert_array_equal(rec["x"], rows[:, 0])
    np.testing.assert_array_equal(rec["ring"], [5, 31])


def test_match_outputs_to_samples_by_key_camera_stamp():
    samples = [
        bagio.SampleRecord(1000, "a", "s", "t", 0, {"CAM_FRONT_LEFT": 1003}),
        bagio.SampleRecord(2000, "b", "s", "t", 1, {"CAM_FRONT_LEFT": 2004}),
        bagio.SampleRecord(3000, "c", "s", "t", 2, {"CAM_FRONT_LEFT": 3001}),
    ]
    outputs = [950, 1003, 1090, 2004, 2990]
    assert bagio.match_to_samples(samples, outputs, "CAM_FRONT_LEFT") == {"a": 1, "b": 3}
    assert bagio.match_to_samples(samples, outputs, "CAM_FRONT_LEFT", tolerance_ns=20) == {"a": 1, "b": 3, "c": 4}
    assert bagio.match_to_samples(samples, [1000, 3000]) == {"a": 0, "c": 1}
    with pytest.raises(ValueError, match="no recorded CAM_BACK keyframe stamp"):
        bagio.match_to_samples(samples, outputs, "CAM_BACK")


def test_interface_dir_finds_the_repository_messages():
    folder = bagio.interface_dir()
    assert all((folder / f"{n}.msg").is_file() for n in bagio.OUR_MESSAGES)
