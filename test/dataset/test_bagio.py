"""bagio: typestore with our messages (same type hashes as the rosidl build), numpy helpers, readers, joins."""

from __future__ import annotations

import array
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from flashocc_ros.config import CLASS_NAMES, FREE_INDEX, OCC_GRID
from flashocc_ros.dataset import bagio
from flashocc_ros.ros import messages as ros_convert


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
    back = ros_convert.occupancy_from_msg(store.deserialize_cdr(raw, bagio.SEMANTIC_OCCUPANCY))
    assert back.stamp_ns == 123_000_456 and back.frame_id == "base_link" and back.source == "ground_truth"
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_array_equal(back.mask_camera, cam)
    np.testing.assert_array_equal(back.mask_lidar, lidar)
    # layout: labels[(ix * size_y + iy) * size_z + iz]
    assert msg.labels[(3 * 200 + 7) * 16 + 5] == labels[3, 7, 5]
    assert list(msg.class_names) == list(CLASS_NAMES) and msg.free_index == FREE_INDEX

    pred = ros_convert.occupancy_from_msg(make.semantic_occupancy(1, labels, source="flashocc-r50-M0"))
    assert pred.mask_camera is None and pred.mask_lidar is None


def test_bad_grids_are_named():
    make = bagio.MessageFactory()
    with pytest.raises(ValueError, match=r"labels: shape \(200, 200\)"):
        make.semantic_occupancy(0, np.zeros((200, 200), np.uint8))
    msg = make.semantic_occupancy(0, np.zeros(OCC_GRID.shape, np.uint8))
    msg.labels = msg.labels[:-1]
    with pytest.raises(ValueError, match="labels has 639999 entries"):
        ros_convert.occupancy_from_msg(msg)
    msg.size_z = 8
    with pytest.raises(ValueError, match=r"size \(200, 200, 8\)"):
        ros_convert.occupancy_from_msg(msg)


@pytest.mark.ros
def test_rclpy_reads_our_padded_cdr_and_the_helpers_read_rclpy_messages():
    from rclpy.serialization import deserialize_message, serialize_message

    from flashocc_ros.msg import PanopticOccupancy, SampleInfo, SemanticOccupancy

    store = bagio.make_typestore()
    make = bagio.MessageFactory(store)
    labels, cam, lidar = random_grids(2)
    raw = bagio.serialize(store, make.semantic_occupancy(5, labels, mask_camera=cam), bagio.SEMANTIC_OCCUPANCY)
    rc = deserialize_message(raw, SemanticOccupancy)
    grid = ros_convert.occupancy_from_msg(rc)
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
    sem, ids_back = ros_convert.panoptic_from_msg(back)
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


def _small_bag(path, storage="mcap", distro="kilted", messages=400):
    store = bagio.make_typestore(distro)
    make = bagio.MessageFactory(store)
    writer = bagio.open_writer(path, storage=storage, distro=distro)
    writer.open()
    conn = writer.add_connection(
        bagio.TF_TOPIC, bagio.TF_MESSAGE, typestore=store, offered_qos_profiles=[bagio.TF_QOS, bagio.STATIC_QOS]
    )
    for i in range(messages):
        tf = make.transform(1000 + i, "map", "base_link", (i, 0, 0), (1, 0, 0, 0))
        writer.write(conn, 1000 + i, bagio.serialize(store, make.tf_message([tf] * 40), bagio.TF_MESSAGE))
        if i % 100 == 99:
            writer.flush()  # several chunks
    return writer, store


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bags_record_the_distro_crcs_and_type_hash(tmp_path, storage):
    import sqlite3

    import yaml
    from mcap.reader import make_reader

    writer, store = _small_bag(tmp_path / "bag", storage, "humble")
    writer.close()
    info = yaml.safe_load((tmp_path / "bag" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["ros_distro"] == "humble" and info["version"] == bagio.BAG_VERSION["humble"]
    assert bagio.check_bag(tmp_path / "bag") == []
    if storage == "sqlite3":
        (db,) = (tmp_path / "bag").glob("*.db3")
        assert sqlite3.connect(db).execute("SELECT ros_distro FROM schema").fetchall() == [("humble",)]
        return
    (file,) = (tmp_path / "bag").glob("*.mcap")
    with open(file, "rb") as f:
        reader = make_reader(f, validate_crcs=True)
        summary = reader.get_summary()
        (channel,) = summary.channels.values()
        assert channel.metadata["topic_type_hash"] == store.hash_rihs01(bagio.TF_MESSAGE)
        assert channel.metadata["offered_qos_profiles"].count("depth:") == 2
        assert len(summary.chunk_indexes) >= 4
        assert sum(1 for _ in reader.iter_messages()) == 400
        rosbag2 = next(m for m in reader.iter_metadata() if m.name == "rosbag2")
        assert "ros_distro: humble" in rosbag2.metadata["serialized_metadata"]
    from mcap.records import Chunk, DataEnd
    from mcap.stream_reader import StreamReader

    with open(file, "rb") as f:
        records = list(StreamReader(f, emit_chunks=True).records)
    chunks = [r for r in records if isinstance(r, Chunk)]
    assert len(chunks) >= 4 and all(c.uncompressed_crc != 0 for c in chunks)
    assert next(r for r in records if isinstance(r, DataEnd)).data_section_crc != 0


def test_check_bag_names_corrupted_bytes(tmp_path):
    writer, _ = _small_bag(tmp_path / "bag")
    writer.close()
    (file,) = (tmp_path / "bag").glob("*.mcap")
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)
    file.write_bytes(bytes(data))
    problems = bagio.check_bag(tmp_path / "bag")
    assert problems and str(file) in problems[0]
    assert any("damaged" in p or "crc" in p.lower() for p in problems), problems


def test_an_unfinished_mcap_is_recovered_chunk_by_chunk(tmp_path):
    writer, store = _small_bag(tmp_path / "bag", messages=350)  # 3 flushed chunks + 50 messages in memory
    writer.storage._file.flush()
    (partial,) = (tmp_path / "bag").glob("*.mcap")
    with pytest.raises(Exception):  # noqa: B017 - no footer: plain readers refuse it
        list(bagio.iter_messages(tmp_path / "bag"))
    report = bagio.recover_mcap(partial, tmp_path / "recovered")
    assert report.messages == 300 and report.topics == {bagio.TF_TOPIC: 300}
    msgs = list(bagio.iter_messages(tmp_path / "recovered"))
    assert [m.log_time_ns for m in msgs] == list(range(1000, 1300))
    assert msgs[-1].msg.transforms[0].transform.translation.x == 299
    with bagio.open_reader(tmp_path / "recovered") as reader:
        (conn,) = reader.connections
    assert len(conn.ext.offered_qos_profiles) == 2 and conn.digest == store.hash_rihs01(bagio.TF_MESSAGE)
    assert bagio.check_bag(tmp_path / "recovered") == []
    with pytest.raises(FileExistsError):
        bagio.recover_mcap(partial, tmp_path / "recovered")
    writer.abort()


# Humble's rosbag2 (0.15.x) reads metadata.yaml field by field: version, storage_identifier, duration, starting_time,
# message_count, topics_with_message_count (topic_metadata name / type / serialization_format, offered_qos_profiles
# from version 4 on, as a YAML string its transport parses with sec / nsec durations), relative_file_paths, from
# version 3 compression_format / compression_mode, from version 5 files (path, starting_time, duration,
# message_count). Keys of later versions are never read. Restated here from that reader (rosbag2_storage
# metadata_io.cpp and rosbag2_transport qos.cpp on the humble branch); it was not run here (no Humble install).
_HUMBLE_DURATION = {"sec", "nsec"}
_HUMBLE_QOS_KEYS = {"history", "depth", "reliability", "durability", "liveliness", "avoid_ros_namespace_conventions"}


def _humble_reader_problems(info: dict) -> list[str]:
    problems = []

    def need(node, key, kind, where):
        if not isinstance(node, dict) or key not in node or not isinstance(node[key], kind):
            problems.append(f"{where}.{key}: missing or not {kind}")
            return None
        return node[key]

    version = need(info, "version", int, "bag")
    need(info, "storage_identifier", str, "bag")
    for key, sub in (("duration", "nanoseconds"), ("starting_time", "nanoseconds_since_epoch")):
        need(need(info, key, dict, "bag") or {}, sub, int, f"bag.{key}")
    need(info, "message_count", int, "bag")
    need(info, "relative_file_paths", list, "bag")
    if (version or 0) >= 3:
        need(info, "compression_format", str, "bag")
        need(info, "compression_mode", str, "bag")
    if (version or 0) >= 5:
        for i, f in enumerate(need(info, "files", list, "bag") or []):
            need(f, "path", str, f"files[{i}]")
            need(need(f, "starting_time", dict, f"files[{i}]") or {}, "nanoseconds_since_epoch", int, "files")
            need(need(f, "duration", dict, f"files[{i}]") or {}, "nanoseconds", int, "files")
            need(f, "message_count", int, f"files[{i}]")
    for t in need(info, "topics_with_message_count", list, "bag") or []:
        meta = need(t, "topic_metadata", dict, "topic") or {}
        for key in ("name", "type", "serialization_format"):
            need(meta, key, str, "topic_metadata")
        qos_text = need(meta, "offered_qos_profiles", str, "topic_metadata") if (version or 0) >= 4 else ""
        for q in yaml.safe_load(qos_text or "[]") or []:
            missing = _HUMBLE_QOS_KEYS - set(q)
            durations = ("deadline", "lifespan", "liveliness_lease_duration")
            bad = [d for d in durations if not isinstance(q.get(d), dict) or set(q[d]) != _HUMBLE_DURATION]
            if missing or bad:
                problems.append(f"{meta.get('name')}: QoS profile Humble cannot parse (missing {missing}, {bad})")
    return problems


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_humble_bags_are_what_humbles_reader_parses(tmp_path, storage):
    """--distro humble bags pass Humble's metadata reader (restated above); the Jazzy/Kilted format does not (its
    QoS durations changed form), which is why the distro must be chosen when converting."""
    for distro, readable in (("humble", True), ("kilted", False)):
        writer, _ = _small_bag(tmp_path / distro, storage, distro, messages=3)
        writer.close()
        info = yaml.safe_load((tmp_path / distro / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        problems = _humble_reader_problems(info)
        assert (problems == []) is readable, (distro, problems)
        if storage == "mcap" and distro == "humble":
            from mcap.reader import make_reader

            (file,) = (tmp_path / distro).glob("*.mcap")
            with open(file, "rb") as f:
                (channel,) = make_reader(f).get_summary().channels.values()
            qos_info = {"version": 8, "topics_with_message_count": []}
            meta = {"name": "tf", "type": "t", "serialization_format": "cdr"}
            meta["offered_qos_profiles"] = channel.metadata["offered_qos_profiles"]
            qos_info["topics_with_message_count"].append({"topic_metadata": meta})
            assert not [p for p in _humble_reader_problems(qos_info) if "QoS" in p]


def test_point_fields_follow_the_sensor_msgs_datatypes():
    """PointField datatypes (sensor_msgs: UINT16 = 4, FLOAT32 = 7) of both clouds, from their numpy layouts; the
    packed colour is uint32 bits declared FLOAT32 (the PCL / RViz convention)."""
    from flashocc_ros.ros.messages import OCCUPANCY_POINT_DTYPE
    from flashocc_ros.ros.occupancy_codec import BadInput, point_fields, points_from_msg

    as_tuples = [(f["name"], f["offset"], f["datatype"], f["count"]) for f in point_fields(bagio.LIDAR_POINT_DTYPE)]
    assert as_tuples == [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("intensity", 12, 7, 1), ("ring", 16, 4, 1)]
    occ = [(f["name"], f["offset"], f["datatype"]) for f in point_fields(OCCUPANCY_POINT_DTYPE)]
    assert occ == [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("rgb", 12, 7), ("label", 16, 4), ("instance", 18, 4)]
    store = bagio.make_typestore()
    lidar = bagio.MessageFactory(store).pointcloud(10, "LIDAR_TOP", np.zeros((3, 5), np.float32))
    with pytest.raises(BadInput, match=r"PointCloud2: layout \['x', 'y', 'z', 'intensity', 'ring'\] with point_step"):
        points_from_msg(lidar, OCCUPANCY_POINT_DTYPE)
