"""nuScenes -> rosbag2 converter on the synthetic dataset: content, stamps, TF math, bytes, GT, errors, re-runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.geometry_utils import transform_matrix
from pyquaternion import Quaternion

from flashocc_ros.config import CAMERA_NAMES, CLASS_NAMES, FREE_INDEX, OCC_GRID
from flashocc_ros.dataset import bagio
from flashocc_ros.dataset.nusc2bag import PARTIAL_PREFIX, ConversionError, ConvertOptions, convert
from flashocc_ros.dataset.synthetic import make_synthetic_nuscenes
from flashocc_ros.ros import messages as ros_convert
from flashocc_ros.tools import nusc2bag as cli


@pytest.fixture(scope="module")
def nusc(synthetic_nuscenes):
    return NuScenes(synthetic_nuscenes.version, str(synthetic_nuscenes.dataroot), verbose=False)


@pytest.fixture(scope="module")
def bags(synthetic_nuscenes, tmp_path_factory):
    """Both synthetic scenes converted in two worker processes, with lidar and Occ3D ground truth."""
    out = tmp_path_factory.mktemp("bags")
    options = ConvertOptions(lidar=True, occ3d_gts=synthetic_nuscenes.occ3d_gts_dir)
    results = convert(synthetic_nuscenes.dataroot, synthetic_nuscenes.version, None, out, options, jobs=2)
    assert [(r.scene_name, r.status, r.error) for r in results] == [
        (n, "written", "") for n in synthetic_nuscenes.scene_names
    ]
    return out


def scene_record(nusc, name):
    return next(s for s in nusc.scene if s["name"] == name)


def scene_sample_data(nusc, name, channel):
    scene_token = scene_record(nusc, name)["token"]
    return sorted(
        (
            sd
            for sd in nusc.sample_data
            if sd["channel"] == channel and nusc.get("sample", sd["sample_token"])["scene_token"] == scene_token
        ),
        key=lambda sd: sd["timestamp"],
    )


def by_topic(path):
    out: dict[str, list[bagio.BagMessage]] = {}
    for m in bagio.iter_messages(path):
        out.setdefault(m.topic, []).append(m)
    return out


def matrix(transform) -> np.ndarray:
    r, t = transform.rotation, transform.translation
    return transform_matrix([t.x, t.y, t.z], Quaternion(r.w, r.x, r.y, r.z))


def test_one_complete_bag_per_scene_with_expected_topics_and_counts(bags, nusc, synthetic_nuscenes):
    assert sorted(p.name for p in bags.iterdir()) == sorted(synthetic_nuscenes.scene_names)  # no temp leftovers
    for name in synthetic_nuscenes.scene_names:
        counts = {topic: n for topic, (_, n) in bagio.topic_counts(bags / name).items()}
        lidar = scene_sample_data(nusc, name, "LIDAR_TOP")
        stamps = {sd["timestamp"] for sd in lidar}
        expected = {
            bagio.TF_STATIC_TOPIC: 1,
            bagio.SAMPLE_TOPIC: 3,
            bagio.GROUND_TRUTH_TOPIC: 3,
            bagio.LIDAR_TOPIC: len(lidar),
        }
        for cam in CAMERA_NAMES:
            frames = scene_sample_data(nusc, name, cam)
            stamps |= {sd["timestamp"] for sd in frames}
            assert len(frames) == 13
            expected[bagio.image_topic(cam)] = expected[bagio.camera_info_topic(cam)] = len(frames)
        expected[bagio.TF_TOPIC] = len(stamps)
        assert counts == expected


def test_images_are_the_source_jpeg_bytes_at_exact_stamps(bags, nusc, synthetic_nuscenes):
    name = synthetic_nuscenes.scene_names[0]
    msgs = by_topic(bags / name)
    for cam in CAMERA_NAMES:
        frames = scene_sample_data(nusc, name, cam)
        images = msgs[bagio.image_topic(cam)]
        infos = msgs[bagio.camera_info_topic(cam)]
        assert len(images) == len(frames) == len(infos)
        cs = nusc.get("calibrated_sensor", frames[0]["calibrated_sensor_token"])
        for sd, img, info in zip(frames, images, infos):
            want = sd["timestamp"] * 1000
            assert bagio.stamp_ns(img.msg.header) == img.log_time_ns == want
            assert bagio.stamp_ns(info.msg.header) == info.log_time_ns == want
            assert img.msg.header.frame_id == info.msg.header.frame_id == cam
            assert img.msg.format == "jpeg"
            source = (synthetic_nuscenes.dataroot / sd["filename"]).read_bytes()
            assert img.msg.data.tobytes() == source
            assert (info.msg.width, info.msg.height) == (1600, 900)
            np.testing.assert_array_equal(info.msg.k.reshape(3, 3), np.array(cs["camera_intrinsic"]))
            assert not info.msg.d.any() and info.msg.distortion_model == "plumb_bob"
            np.testing.assert_array_equal(info.msg.p.reshape(3, 4)[:, :3], np.array(cs["camera_intrinsic"]))


def test_composed_tf_equals_devkit_pose_math(bags, nusc, synthetic_nuscenes):
    name = synthetic_nuscenes.scene_names[1]
    msgs = by_topic(bags / name)
    (static,) = msgs[bagio.TF_STATIC_TOPIC]
    assert msgs[bagio.TF_STATIC_TOPIC][0].msg.transforms[0].header.frame_id == "base_link"
    ego_from_sensor = {t.child_frame_id: matrix(t.transform) for t in static.msg.transforms}
    assert set(ego_from_sensor) == {*CAMERA_NAMES, "LIDAR_TOP"}
    global_from_ego = {}
    for m in msgs[bagio.TF_TOPIC]:
        (t,) = m.msg.transforms
        assert (t.header.frame_id, t.child_frame_id) == ("map", "base_link")
        assert bagio.stamp_ns(t.header) == m.log_time_ns
        global_from_ego[m.log_time_ns] = matrix(t.transform)
    for cam in (*CAMERA_NAMES, "LIDAR_TOP"):
        for sd in scene_sample_data(nusc, name, cam):
            pose = nusc.get("ego_pose", sd["ego_pose_token"])
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            devkit = transform_matrix(pose["translation"], Quaternion(pose["rotation"])) @ transform_matrix(
                cs["translation"], Quaternion(cs["rotation"])
            )
            ours = global_from_ego[sd["timestamp"] * 1000] @ ego_from_sensor[cam]
            np.testing.assert_allclose(ours, devkit, rtol=0, atol=1e-9)


def test_sample_identity_and_ground_truth_round_trip(bags, nusc, synthetic_nuscenes):
    for name in synthetic_nuscenes.scene_names:
        msgs = by_topic(bags / name)
        tokens = synthetic_nuscenes.samples_by_scene[name]
        samples, gts = msgs[bagio.SAMPLE_TOPIC], msgs[bagio.GROUND_TRUTH_TOPIC]
        for index, (token, s, g) in enumerate(zip(tokens, samples, gts)):
            stamp = nusc.get("sample", token)["timestamp"] * 1000
            info = bagio.sample_from_msg(s.msg)
            assert (info.sample_token, info.scene_name, info.sample_index, info.stamp_ns) == (token, name, index, stamp)
            assert info.scene_token == scene_record(nusc, name)["token"]
            grid = ros_convert.occupancy_from_msg(g.msg)
            assert grid.stamp_ns == g.log_time_ns == stamp and grid.frame_id == "base_link"
            assert grid.source == "ground_truth" and list(g.msg.class_names) == list(CLASS_NAMES)
            assert g.msg.free_index == FREE_INDEX and (g.msg.size_x, g.msg.size_y, g.msg.size_z) == OCC_GRID.shape
            with np.load(synthetic_nuscenes.gt_path(name, token)) as want:
                np.testing.assert_array_equal(grid.labels, want["semantics"])
                np.testing.assert_array_equal(grid.mask_camera, want["mask_camera"])
                np.testing.assert_array_equal(grid.mask_lidar, want["mask_lidar"])
        records = bagio.read_samples(bags / name)
        assert [r.sample_token for r in records] == list(tokens)
        for r in records:
            sample = nusc.get("sample", r.sample_token)
            for cam in CAMERA_NAMES:
                assert r.camera_stamps_ns[cam] == nusc.get("sample_data", sample["data"][cam])["timestamp"] * 1000


def test_lidar_points_are_the_source_rows(bags, nusc, synthetic_nuscenes):
    name = synthetic_nuscenes.scene_names[0]
    msgs = by_topic(bags / name)[bagio.LIDAR_TOPIC]
    for sd, m in zip(scene_sample_data(nusc, name, "LIDAR_TOP"), msgs):
        rows = np.fromfile(synthetic_nuscenes.dataroot / sd["filename"], np.float32).reshape(-1, 5)
        rec = bagio.pointcloud_to_records(m.msg)
        assert m.msg.header.frame_id == "LIDAR_TOP" and m.log_time_ns == sd["timestamp"] * 1000
        np.testing.assert_array_equal(np.column_stack([rec[k] for k in ("x", "y", "z", "intensity")]), rows[:, :4])
        np.testing.assert_array_equal(rec["ring"], rows[:, 4].astype(np.uint16))


def test_tf_static_is_transient_local_in_the_metadata(bags, synthetic_nuscenes):
    with bagio.open_reader(bags / synthetic_nuscenes.scene_names[0]) as reader:
        qos = {c.topic: c.ext.offered_qos_profiles[0] for c in reader.connections}
    assert qos[bagio.TF_STATIC_TOPIC].durability.name == "TRANSIENT_LOCAL"
    assert qos[bagio.image_topic("CAM_FRONT")].durability.name == "VOLATILE"
    assert all(q.reliability.name == "RELIABLE" for q in qos.values())


@pytest.mark.ros
def test_every_topic_deserializes_with_rclpy(bags, synthetic_nuscenes):
    import importlib

    from rclpy.serialization import deserialize_message

    def get_message(msgtype: str):
        package, _, name = msgtype.split("/")
        return getattr(importlib.import_module(f"{package}.msg"), name)

    seen = set()
    for m in bagio.iter_messages(bags / synthetic_nuscenes.scene_names[0], deserialize=False):
        if m.topic in seen:
            continue
        seen.add(m.topic)
        msg = deserialize_message(m.raw, get_message(m.msgtype))
        if hasattr(msg, "header"):
            assert bagio.stamp_ns(msg.header) == m.log_time_ns
        if m.msgtype == bagio.SEMANTIC_OCCUPANCY:
            assert ros_convert.occupancy_from_msg(msg).labels.shape == OCC_GRID.shape
        if m.msgtype == bagio.TF_MESSAGE:
            assert msg.transforms[0].header.frame_id == ("map" if m.topic == "/tf" else "base_link")
    assert len(seen) == 17


def test_keyframes_only_sqlite3_humble(synthetic_nuscenes, tmp_path):
    results = convert(
        synthetic_nuscenes.dataroot,
        synthetic_nuscenes.version,
        ["scene-0916"],
        tmp_path,
        ConvertOptions(storage="sqlite3", distro="humble", keyframes_only=True),
    )
    assert results[0].status == "written", results[0].error
    bag = tmp_path / "scene-0916"
    assert any(p.suffix == ".db3" for p in bag.iterdir())
    counts = {t: n for t, (_, n) in bagio.topic_counts(bag).items()}
    assert counts[bagio.image_topic("CAM_FRONT")] == 3 and bagio.GROUND_TRUTH_TOPIC not in counts
    assert counts[bagio.TF_TOPIC] == 3 * 7  # 6 keyframe images + the LIDAR_TOP keyframe per sample


@pytest.fixture
def small_dataset(tmp_path):
    return make_synthetic_nuscenes(tmp_path / "nuscenes", 2, 2, camera_sweeps=False, lidar=False)


def test_bad_scene_input_fails_alone_and_leaves_no_partial_bag(small_dataset, tmp_path, capsys):
    ds = small_dataset
    victim = next((ds.dataroot / "samples" / "CAM_BACK").glob("*__1533151663*.jpg"))  # a scene-0916 image
    victim.unlink()
    out = tmp_path / "bags"
    argv = ["--dataroot", str(ds.dataroot), "--version", ds.version, "--out", str(out)]
    argv += ["--scenes", "scene-0103,scene-0916,scene-9999", "--occ3d-gts", str(ds.occ3d_gts_dir)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"scene-0916: missing image file {victim}" in err
    assert "scene-9999: unknown scene" in err
    assert sorted(p.name for p in out.iterdir()) == ["scene-0103"]  # no half-written bag, no temp folder

    # Re-running skips the finished scene; the repaired scene converts.
    victim.write_bytes(b"\xff\xd8 not really a jpeg, but bytes are copied as they are")
    assert cli.main(argv[:-4] + ["--scenes", "scene-0103,scene-0916"]) == 0
    out_text = capsys.readouterr()
    assert "skipped scene-0103" in out_text.err and "1 written, 1 skipped, 0 failed" in out_text.out
    assert sorted(p.name for p in out.iterdir()) == ["scene-0103", "scene-0916"]


def test_ground_truth_folder_without_the_scene(small_dataset, tmp_path):
    gts = tmp_path / "other_gts"
    (gts / "scene-0103").mkdir(parents=True)
    results = convert(
        small_dataset.dataroot, small_dataset.version, None, tmp_path / "b", ConvertOptions(occ3d_gts=gts)
    )
    assert [r.status for r in results] == ["failed", "failed"]
    assert "missing Occ3D ground truth" in results[0].error and str(gts / "scene-0103") in results[0].error
    assert results[1].error == f"scene-0916: Occ3D ground-truth folder {gts} has no scene-0916/"
    assert not any(p.name.startswith(PARTIAL_PREFIX) for p in (tmp_path / "b").iterdir())


def test_wrong_dataroot_version_or_split_is_one_clear_error(small_dataset, tmp_path, capsys):
    ds = small_dataset
    with pytest.raises(ConversionError, match="--version v1.0-trainval: .* does not exist"):
        convert(ds.dataroot, "v1.0-trainval", None, tmp_path / "b")
    with pytest.raises(ConversionError, match="no such directory"):
        convert(tmp_path / "nope", "v1.0-mini", None, tmp_path / "b")
    with pytest.raises(ConversionError, match="--split train: none of its"):
        convert(ds.dataroot, ds.version, None, tmp_path / "b", split="train")
    assert cli.main(["--dataroot", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    assert f"--dataroot {tmp_path / 'nope'}: no such directory" in capsys.readouterr().err
    results = convert(ds.dataroot, ds.version, None, tmp_path / "b", split="mini_val")
    assert [r.scene_name for r in results] == ["scene-0103", "scene-0916"]


def test_bags_open_with_plain_rosbags_reader_and_embed_definitions(bags, synthetic_nuscenes):
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(bags / synthetic_nuscenes.scene_names[0])]) as reader:  # no typestore: embedded defs only
        conn = next(c for c in reader.connections if c.topic == bagio.GROUND_TRUTH_TOPIC)
        _, _, raw = next(reader.messages(connections=[conn]))
        msg = reader.deserialize(raw, conn.msgtype)
        assert msg.labels.size == np.prod(OCC_GRID.shape)


def _argv(ds, out, *extra):
    return ["--dataroot", str(ds.dataroot), "--version", ds.version, "--out", str(out), *extra]


def test_a_folder_that_is_not_our_bag_is_never_deleted(small_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "scene-0103").mkdir(parents=True)
    (out / "scene-0103" / "notes.txt").write_text("keep")
    (out / "scene-0916").write_text("a file where the bag would go")
    for extra in ([], ["--overwrite"]):
        assert cli.main(_argv(small_dataset, out, "--scenes", "scene-0103,scene-0916", *extra)) == 1
        err = capsys.readouterr().err
        assert f"scene-0103: {out / 'scene-0103'} exists and is not a bag written by flashocc-nusc2bag" in err
        assert f"scene-0916: {out / 'scene-0916'} exists and is a file" in err
        assert (out / "scene-0103" / "notes.txt").read_text() == "keep"
        assert (out / "scene-0916").read_text() == "a file where the bag would go"
        assert sorted(p.name for p in out.iterdir()) == ["scene-0103", "scene-0916"]


def test_overwrite_replaces_only_our_own_bag(small_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(_argv(small_dataset, out, "--scenes", "scene-0103")) == 0
    bag = out / "scene-0103"
    first = sorted(p.name for p in bag.iterdir())
    assert cli.main(_argv(small_dataset, out, "--scenes", "scene-0103", "--overwrite")) == 0
    assert "1 written, 0 skipped, 0 failed" in capsys.readouterr().out
    assert sorted(p.name for p in bag.iterdir()) == first
    # another bag (not ours for this scene) under the scene's name is refused even with --overwrite
    (out / "scene-0916").mkdir()
    (out / "scene-0916" / "metadata.yaml").write_text("rosbag2_bagfile_information: {custom_data: null}\n")
    assert cli.main(_argv(small_dataset, out, "--scenes", "scene-0916", "--overwrite")) == 1
    assert "is not a bag written by flashocc-nusc2bag" in capsys.readouterr().err
    assert [p.name for p in (out / "scene-0916").iterdir()] == ["metadata.yaml"]


def test_out_that_is_a_file_is_one_clear_error(small_dataset, tmp_path, capsys):
    target = tmp_path / "bags.txt"
    target.write_text("mine")
    assert cli.main(_argv(small_dataset, target)) == 2
    err = capsys.readouterr().err
    assert f"flashocc-nusc2bag: error: --out {target}: exists and is not a directory" in err
    assert "Traceback" not in err and target.read_text() == "mine"


def test_truncated_jpeg_is_copied_with_a_warning_naming_it(small_dataset, tmp_path, capsys):
    victim = next((small_dataset.dataroot / "samples" / "CAM_FRONT").glob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:-100])
    assert cli.main(_argv(small_dataset, tmp_path / "out")) == 0
    err = capsys.readouterr().err
    assert "warning: scene-" in err and f"{victim} has no JPEG end-of-image marker" in err
    assert "1 warnings (see above)" in err


def test_rerun_cleans_stale_partials_of_killed_runs_and_reports_them(small_dataset, tmp_path, capsys):
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f"{PARTIAL_PREFIX}scene-0103-{dead.pid}"
    (stale / "scene-0103").mkdir(parents=True)
    (stale / "scene-0103" / "scene-0103.mcap").write_bytes(b"\x89MCAP0\r\n half")
    (stale / ".flashocc-nusc2bag").write_text(f"{dead.pid} scene-0103\n")
    foreign = out / f"{PARTIAL_PREFIX}mine"
    foreign.mkdir()
    (foreign / "data.txt").write_text("not the converter's")
    assert cli.main(_argv(small_dataset, out, "--scenes", "scene-0103")) == 0
    err = capsys.readouterr().err
    assert f"note: removed {stale}: unfinished bag of scene-0103 left by a run that was killed (pid {dead.pid})" in err
    assert f"note: {foreign}: not created by this converter" in err
    assert not stale.exists() and (foreign / "data.txt").read_text() == "not the converter's"
    assert sorted(p.name for p in out.iterdir()) == [foreign.name, "scene-0103"]
