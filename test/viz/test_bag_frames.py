"""Occupancy frames and camera images from bags (written here with flashocc_ros.dataset.bagio)."""

import io

import numpy as np
import pytest
from PIL import Image

from flashocc_ros.config import CAMERA_NAMES, FREE_INDEX, OCC_GRID
from flashocc_ros.viz.loaders import OccupancyFileError, OccupancySequence, pair_frames

bagio = pytest.importorskip("flashocc_ros.dataset.bagio")

T0 = 1_533_151_603_547_590_000
STAMPS = [T0, T0 + 500_000_000]
TOKENS = ["tok_a", "tok_b"]


def jpeg(value):
    buf = io.BytesIO()
    Image.fromarray(np.full((90, 160, 3), value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def grid(value):
    g = np.full(OCC_GRID.shape, FREE_INDEX, np.uint8)
    g[:, :, 2] = value
    return g


def write_bag(path, messages):
    store = bagio.make_typestore()
    writer = bagio.open_writer(path)
    writer.open()
    conns = {}
    try:
        for topic, msgtype, stamp, msg in sorted(messages, key=lambda m: m[2]):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(conns[topic], stamp, store.serialize_cdr(msg, msgtype))
    finally:
        writer.close()
    return path


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    fac = bagio.MessageFactory()
    mask = np.zeros(OCC_GRID.shape, np.uint8)
    mask[:, 100:] = 1
    gt_msgs = []
    for k, (stamp, token) in enumerate(zip(STAMPS, TOKENS)):
        gt_msgs.append((bagio.SAMPLE_TOPIC, bagio.SAMPLE_INFO, stamp, fac.sample_info(stamp, token, "scene-1", "s", k)))
        occ = fac.semantic_occupancy(stamp, grid(11 + k), mask_camera=mask, mask_lidar=mask)
        gt_msgs.append((bagio.GROUND_TRUTH_TOPIC, bagio.SEMANTIC_OCCUPANCY, stamp, occ))
        for c, cam in enumerate(CAMERA_NAMES):
            for dt in (-80_000_000, 10_000_000 * c):  # an earlier sweep and the keyframe image
                img = fac.compressed_image(stamp + dt, cam, jpeg(40 * c + (0 if dt < 0 else 20)))
                gt_msgs.append((bagio.image_topic(cam), bagio.COMPRESSED_IMAGE, stamp + dt, img))
    gt_bag = write_bag(root / "gt_bag", gt_msgs)
    pred_msgs = []
    for k, stamp in enumerate(STAMPS):
        sem = fac.semantic_occupancy(stamp + 20_000_000, grid(4 + k), source="flashocc-r50-M0")
        pan = np.where(grid(4 + k) == 4, 30, grid(4 + k)).astype(np.uint16)
        msg = fac.T[bagio.PANOPTIC_OCCUPANCY](semantic=sem, mode="corrected", panoptic=pan.ravel(), instances=[])
        pred_msgs.append((bagio.PANOPTIC_TOPIC, bagio.PANOPTIC_OCCUPANCY, stamp + 20_000_000, msg))
    pred_bag = write_bag(root / "pred_bag", pred_msgs)
    return gt_bag, pred_bag


def test_ground_truth_bag_frames(bags):
    gt_bag, _ = bags
    seq = OccupancySequence.open(gt_bag, bagio.GROUND_TRUTH_TOPIC)
    assert seq.names == TOKENS  # named by /nuscenes/sample
    frame = seq[1]
    assert frame.kind == "ground_truth" and frame.stamp_ns == STAMPS[1]
    assert frame.semantic[0, 0, 2] == 12 and frame.mask_camera[0, 150, 0] and not frame.mask_camera[0, 50, 0]
    images = frame.camera_images()
    assert len(images) == 6
    # The keyframe image (value 40*c + 20, nearest in time), not the sweep 80 ms earlier.
    assert [int(round(im.mean())) for im in images] == pytest.approx([40 * c + 20 for c in range(6)], abs=2)


def test_prediction_bag_pairs_with_ground_truth_by_stamp(bags):
    gt_bag, pred_bag = bags
    preds = OccupancySequence.open(pred_bag, bagio.PANOPTIC_TOPIC)
    assert preds.names == [f"{bagio.PANOPTIC_TOPIC}#0", f"{bagio.PANOPTIC_TOPIC}#1"]
    assert preds[0].panoptic[0, 0, 2] == 30 and preds[0].kind == "prediction"
    pairs = pair_frames(preds, OccupancySequence.open(gt_bag, bagio.GROUND_TRUTH_TOPIC))
    assert [(int(p.semantic[0, 0, 2]), g.name) for p, g in pairs] == [(4, "tok_a"), (5, "tok_b")]


def test_wrong_topic_names_the_available_ones(bags):
    gt_bag, _ = bags
    with pytest.raises(OccupancyFileError, match=r"no occupancy topic '/occupancy/semantic'.*ground_truth"):
        OccupancySequence.open(gt_bag, "/occupancy/semantic")


def test_render_tool_video_from_bags(bags, tmp_path, capsys):
    from flashocc_ros.tools import render as render_tool

    gt_bag, pred_bag = bags
    out = tmp_path / "v.gif"
    argv = [str(pred_bag), "--topic", bagio.PANOPTIC_TOPIC, "--gt", str(gt_bag), "-o", str(out), "--views", "bev"]
    assert render_tool.main(argv + ["--color-by", "instance", "--mask-camera"]) == 0, capsys.readouterr()
    import imageio.v3 as iio

    frames = iio.imread(out, index=None)
    assert frames.shape[0] == 2
    assert frames[0, 100:140, 560:600].reshape(-1, 3).astype(int).mean(axis=0) == pytest.approx([60, 60, 60], abs=4)
