"""INT8 calibration sources (image directories and ROS 2 bags): grouping, content hash, preprocessing, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import simplejpeg

from flashocc_ros.backends.calibration import BagSource, CalibrationError, ImageDirectorySource, make_source
from flashocc_ros.config import CAMERA_NAMES
from flashocc_ros.dataset import bagio


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:450, 0:800].astype(np.float32)
    f = rng.uniform(0.005, 0.05, size=3)
    img = np.stack([127 + 100 * np.sin(f[c] * (u + c * v)) for c in range(3)], -1).astype(np.uint8)
    return simplejpeg.encode_jpeg(img, quality=85, colorspace="RGB")


def test_camera_subdirectories_are_paired_in_sorted_order(tmp_path):
    for c, cam in enumerate(CAMERA_NAMES):
        (tmp_path / cam).mkdir()
        for k in range(3 if c else 2):  # CAM_FRONT_LEFT has only two -> two complete sets
            (tmp_path / cam / f"{k:03d}.jpg").write_bytes(jpeg(10 * k + c))
    src = ImageDirectorySource(root=tmp_path)
    sets = list(src.sets())
    assert len(sets) == 2 and [len(s) for s in sets] == [6, 6]
    assert sets[1][3] == jpeg(10 + 3)
    batch = next(src.batches())
    assert batch.shape == (6, 3, 256, 704) and batch.dtype == np.float32 and np.isfinite(batch).all()
    first = src.sha256()
    assert first == ImageDirectorySource(root=tmp_path).sha256()
    (tmp_path / "CAM_BACK" / "001.jpg").write_bytes(jpeg(99))  # content change -> new calibration identity
    assert ImageDirectorySource(root=tmp_path).sha256() != first
    assert len(list(ImageDirectorySource(root=tmp_path, max_sets=1).sets())) == 1


def test_flat_directory_and_errors(tmp_path):
    for k in range(13):
        (tmp_path / f"img{k:02d}.jpg").write_bytes(jpeg(k))
    assert len(list(ImageDirectorySource(root=tmp_path).sets())) == 2
    (tmp_path / "sub").mkdir()
    with pytest.raises(CalibrationError, match="no images found"):
        ImageDirectorySource(root=tmp_path / "sub")
    with pytest.raises(CalibrationError, match="not found"):
        ImageDirectorySource(root=tmp_path / "missing")
    (tmp_path / "CAM_FRONT").mkdir()
    with pytest.raises(CalibrationError, match="camera sub-directories missing: CAM_FRONT_LEFT"):
        ImageDirectorySource(root=tmp_path)
    with pytest.raises(CalibrationError, match="exactly one"):
        make_source(None, None)


def test_bag_source_groups_one_image_per_camera(tmp_path):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    Compressed = ts.types["sensor_msgs/msg/CompressedImage"]
    bag = tmp_path / "calib_bag"
    with Writer(bag, version=9) as writer:
        conns = {
            cam: writer.add_connection(f"/{cam}/image/compressed", Compressed.__msgtype__, typestore=ts)
            for cam in CAMERA_NAMES
        }
        t = 0
        for k in range(2):
            for c, cam in enumerate(CAMERA_NAMES):
                t += 1000
                msg = Compressed(Header(Time(0, t), cam), "jpeg", np.frombuffer(jpeg(10 * k + c), np.uint8))
                writer.write(conns[cam], t, ts.serialize_cdr(msg, Compressed.__msgtype__))
    src = make_source(bag=str(bag))
    sets = list(src.sets())
    assert len(sets) == 2 and sets[1][5] == jpeg(15)
    assert len(src.sha256()) == 64
    with pytest.raises(CalibrationError, match="none of the topics"):
        list(BagSource(path=bag, image_topic="/other/{camera}").sets())


def test_a_bag_from_the_converter_feeds_the_calibrator(synthetic_nuscenes, tmp_path):
    """flashocc-nusc2bag's bag, read with the calibrator's default topics: every keyframe gives one six-camera set
    of the dataset's own JPEG bytes."""
    from flashocc_ros.dataset.nusc2bag import ConvertOptions, convert

    ds = synthetic_nuscenes
    scene = ds.scene_names[0]
    (result,) = convert(ds.dataroot, ds.version, [scene], tmp_path / "bags", ConvertOptions(keyframes_only=True))
    assert result.status == "written", result.error
    sets = list(make_source(bag=str(result.path), max_sets=100).sets())
    assert len(sets) == bagio.topic_counts(result.path)[bagio.SAMPLE_TOPIC][1] >= 2
    jpeg_files = {p.read_bytes() for p in Path(ds.dataroot, "samples").rglob("*.jpg")}
    assert all(len(s) == len(CAMERA_NAMES) and all(img in jpeg_files for img in s) for s in sets)


def test_device_feeds_copy_any_named_batches_and_hand_out_addresses_in_the_asked_order():
    """The calibrator's feed side on the CPU: generic dicts in, device buffers reused, addresses in `names` order."""
    import torch

    from flashocc_ros.backends.calibration import DeviceFeeds

    rng = np.random.default_rng(0)
    feeds = [{"a": rng.random((2, 3), dtype=np.float32), "b": np.arange(4, dtype=np.int32) + k} for k in range(2)]
    dev = DeviceFeeds(iter(feeds), "cpu")
    first = dev.next_pointers(["b", "a"])
    a_buf = dev.buffers["a"]
    assert first == [dev.buffers["b"].data_ptr(), a_buf.data_ptr()]
    np.testing.assert_array_equal(dev.buffers["a"].numpy(), feeds[0]["a"])
    assert dev.next_pointers(["b", "a"]) == first and dev.buffers["a"] is a_buf  # same shapes: buffers reused
    np.testing.assert_array_equal(dev.buffers["b"].numpy(), feeds[1]["b"])
    assert dev.buffers["b"].dtype == torch.int32 and dev.count == 2
    assert dev.next_pointers(["a", "b"]) is None  # exhausted: TensorRT's end of calibration
    with pytest.raises(CalibrationError, match=r"calibration feed 0 lacks inputs \['img'\]"):
        DeviceFeeds([{"a": np.zeros(1)}], "cpu").next_pointers(["a", "img"])


@pytest.mark.parametrize("short", ["M0", "PT"])
def test_calibration_feeds_hold_every_graph_input(short, tmp_path):
    from flashocc_ros.backends.base import IMAGE_INPUT, input_names
    from flashocc_ros.backends.calibration import calibration_feeds
    from flashocc_ros.config import get_variant

    for k in range(6):
        (tmp_path / f"img{k}.jpg").write_bytes(jpeg(k))
    source = ImageDirectorySource(root=tmp_path)
    variant = get_variant(short)
    (feed,) = list(calibration_feeds(source, variant))
    assert sorted(feed) == sorted(input_names(variant))
    np.testing.assert_array_equal(feed[IMAGE_INPUT], next(source.batches()))


def test_the_calibrator_imports_no_runner_and_no_pipeline():
    from test.test_import_graph import import_graph

    deps = import_graph()["flashocc_ros.backends.calibration"]
    runners = {f"flashocc_ros.backends.{m}" for m in ("torch_runner", "ort_runner", "tensorrt_runner")}
    assert not deps & (
        runners | {"flashocc_ros.inference.pipeline", "flashocc_ros.backends", "flashocc_ros.inference.temporal"}
    )
    for runner in runners:  # and runners only run: they neither export, build nor calibrate
        assert not import_graph()[runner] & {
            "flashocc_ros.backends.onnx_export",
            "flashocc_ros.backends.tensorrt_build",
            "flashocc_ros.backends.calibration",
            "flashocc_ros.backends.loaders",
        }
