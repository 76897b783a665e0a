"""Loading prediction files, Occ3D labels, folders; one clear error for bad input."""

import numpy as np
import pytest

from flashocc_ros.config import FREE_INDEX, OCC_GRID
from flashocc_ros.viz.loaders import (
    OccupancyFileError,
    OccupancySequence,
    load_occupancy_file,
    pair_frames,
)


def grid_with(value, at=(100, 100, 3)):
    g = np.full(OCC_GRID.shape, FREE_INDEX, np.uint8)
    g[at] = value
    return g


def write_pred(path, value, inst=None):
    arrays = {"pred": grid_with(value)}
    if inst is not None:
        arrays["inst"] = inst
    np.savez_compressed(path, **arrays)
    return path


def write_gt(folder, token, value, scene="scene-0001"):
    d = folder / scene / token
    d.mkdir(parents=True)
    mask = np.zeros(OCC_GRID.shape, np.uint8)
    mask[:, 100:] = 1
    np.savez_compressed(
        d / "labels.npz", semantics=grid_with(value), mask_camera=mask, mask_lidar=np.ones(OCC_GRID.shape, np.uint8)
    )
    return d / "labels.npz"


def test_prediction_file(tmp_path):
    inst = np.full(OCC_GRID.shape, FREE_INDEX, np.int32)
    inst[100, 100, 3] = 21
    frame = load_occupancy_file(write_pred(tmp_path / "tok1.npz", 4, inst))
    assert frame.kind == "prediction" and frame.name == "tok1"
    assert frame.semantic.dtype == np.uint8 and frame.semantic[100, 100, 3] == 4
    assert frame.panoptic.dtype == np.int32 and frame.panoptic[100, 100, 3] == 21
    assert frame.mask_camera is None


def test_occ3d_labels(tmp_path):
    frame = load_occupancy_file(write_gt(tmp_path, "tokA", 11))
    assert frame.kind == "ground_truth" and frame.name == "tokA"  # the sample token is the folder name
    assert frame.semantic[100, 100, 3] == 11
    assert frame.mask_camera.dtype == bool and frame.mask_camera[0, 150, 0] and not frame.mask_camera[0, 50, 0]
    assert frame.mask_lidar.all()


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"pred": np.zeros((200, 200, 8), np.uint8)}, r"key pred: shape \(200, 200, 8\), expected \(200, 200, 16\)"),
        ({"pred": np.zeros((16, 200, 200), np.uint8)}, r"key pred: shape \(16, 200, 200\)"),
        ({"pred": np.full(OCC_GRID.shape, 18, np.uint8)}, "key pred: class index 18 is outside 0..17"),
        ({"pred": np.zeros(OCC_GRID.shape, np.float32)}, "key pred: dtype float32"),
        ({"semantics": np.zeros((200, 200), np.uint8)}, r"key semantics: shape \(200, 200\)"),
        ({"labels": np.zeros(OCC_GRID.shape, np.uint8)}, "has keys \\['labels'\\], expected 'pred'"),
        (
            {"semantics": np.zeros(OCC_GRID.shape, np.uint8), "mask_camera": np.full(OCC_GRID.shape, 3, np.uint8)},
            "key mask_camera: mask values must be 0/1",
        ),
        (
            {"pred": np.zeros(OCC_GRID.shape, np.uint8), "inst": np.zeros((200, 200, 15), np.int32)},
            r"key inst: shape \(200, 200, 15\)",
        ),
    ],
)
def test_wrong_content_gives_one_clear_error(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(OccupancyFileError, match=message) as info:
        load_occupancy_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04 truncated zip"])
def test_corrupt_file_gives_one_clear_error(tmp_path, content):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(content)
    with pytest.raises(OccupancyFileError, match="not a readable .npz file") as info:
        load_occupancy_file(path)
    assert str(path) in str(info.value)


def test_truncated_real_file(tmp_path):
    good = write_pred(tmp_path / "good.npz", 4)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(OccupancyFileError, match="cut.npz"):
        load_occupancy_file(cut)


def test_missing_inputs(tmp_path):
    with pytest.raises(OccupancyFileError, match="no such file"):
        load_occupancy_file(tmp_path / "nope.npz")
    with pytest.raises(OccupancyFileError, match="no such file, folder or bag"):
        OccupancySequence.open(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OccupancyFileError, match="no .npz occupancy files"):
        OccupancySequence.open(tmp_path / "empty")


def test_folders_are_lazy_and_pair_by_token(tmp_path):
    preds, gts = tmp_path / "preds", tmp_path / "gts"
    preds.mkdir()
    for i, tok in enumerate(["a1", "b2", "c3"]):
        write_pred(preds / f"{tok}.npz", i + 1)
        write_gt(gts, tok, 10 + i)
    (preds / "b2.npz").write_bytes(b"garbage")  # only fails when that frame is used
    seq = OccupancySequence.open(preds)
    assert len(seq) == 3 and seq.names == ["a1", "b2", "c3"]
    assert seq[2].semantic[100, 100, 3] == 3 and seq[-1].name == "c3"
    with pytest.raises(OccupancyFileError, match="b2.npz"):
        seq[1]
    gt_seq = OccupancySequence.open(gts)
    assert gt_seq.names == ["a1", "b2", "c3"]
    write_pred(preds / "b2.npz", 2)
    pairs = pair_frames(OccupancySequence.open(preds), gt_seq)
    assert [(p.name, g.name, int(g.semantic[100, 100, 3])) for p, g in pairs] == [
        ("a1", "a1", 10),
        ("b2", "b2", 11),
        ("c3", "c3", 12),
    ]


def test_single_files_pair_even_with_different_names(tmp_path):
    pred = OccupancySequence.open(write_pred(tmp_path / "x.npz", 4))
    gt = OccupancySequence.open(write_gt(tmp_path, "y", 11))
    ((p, g),) = pair_frames(pred, gt)
    assert p.name == "x" and g.name == "y"
    assert pair_frames(pred, None)[0][1] is None
