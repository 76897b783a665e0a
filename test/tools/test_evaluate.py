"""flashocc-eval end to end on the synthetic dataset: prediction folders, recorded bags, reports, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flashocc_ros.config import FREE_INDEX, KEY_CAMERA
from flashocc_ros.dataset import bagio
from flashocc_ros.metrics import evaluation as ev
from flashocc_ros.tools.evaluate import main

CAR = 4


@pytest.fixture(scope="module")
def data(synthetic_nuscenes, tmp_path_factory):
    """Predictions = GT with the cars removed, for every synthetic sample."""
    pred_dir = tmp_path_factory.mktemp("eval_preds")
    gt_index = ev.index_ground_truth(synthetic_nuscenes.occ3d_gts_dir)
    preds = {}
    for token, entry in gt_index.items():
        sem = ev.load_ground_truth(entry.path).semantics.copy()
        sem[sem == CAR] = FREE_INDEX
        preds[token] = sem
        ev.write_prediction(pred_dir / f"{token}.npz", sem)
    return synthetic_nuscenes, pred_dir, preds


def _common(ds):
    return ["--gt-dir", str(ds.occ3d_gts_dir), "--dataroot", str(ds.dataroot), "--version", ds.version]


def test_miou_only_needs_no_dataroot(data, capsys):
    ds, pred_dir, _ = data
    assert main(["miou", "--pred-dir", str(pred_dir), "--gt-dir", str(ds.occ3d_gts_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "6 samples: mIoU" in out and "car" in out
    car_row = next(line for line in out.splitlines() if line.startswith("car "))
    assert car_row.split()[1] == "0.00"


def test_all_writes_json_and_plot(data, tmp_path, capsys):
    ds, pred_dir, _ = data
    rc = main(
        ["all", "--pred-dir", str(pred_dir), *_common(ds), "--json", str(tmp_path / "r.json"),
         "--plot", str(tmp_path / "r.png"), "--jobs", "2", "--split", "mini_val"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "RayPQ skipped" in captured.err
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert set(summary) == {"mIoU", "RayIoU", "RayIoU@1", "RayIoU@2", "RayIoU@4"}
    assert 0 < summary["mIoU"] < 100 and 0 < summary["RayIoU"] < 100
    assert (tmp_path / "r.png").stat().st_size > 10_000
    # RayIoU alone gives the same numbers (sample order and origins do not depend on the metric set)
    assert main(["rayiou", "--pred-dir", str(pred_dir), *_common(ds), "--json", str(tmp_path / "ray.json")]) == 0
    alone = json.loads((tmp_path / "ray.json").read_text())["summary"]
    assert alone["RayIoU"] == summary["RayIoU"]


def test_errors_are_reported_with_exit_code_2(data, tmp_path, capsys):
    ds, pred_dir, preds = data
    assert main(["rayiou", "--pred-dir", str(pred_dir), "--gt-dir", str(ds.occ3d_gts_dir)]) == 2
    assert "need --dataroot" in capsys.readouterr().err
    token = next(iter(preds))
    ev.write_prediction(tmp_path / "unknown_token.npz", preds[token])
    assert main(["miou", "--pred-dir", str(tmp_path), "--gt-dir", str(ds.occ3d_gts_dir)]) == 2
    assert "1 predictions have no ground truth" in capsys.readouterr().err
    partial = tmp_path / "partial"
    ev.write_prediction(partial / f"{token}.npz", preds[token])
    assert main(["miou", "--pred-dir", str(partial), *_common(ds), "--split", "mini_val"]) == 2
    assert "split mini_val: 5 samples have no prediction" in capsys.readouterr().err
    assert main(["raypq", "--pred-dir", str(partial), *_common(ds)]) == 2
    assert "missing key 'instances'" in capsys.readouterr().err


def _write_bag(path, ds, preds, stamp_offset_ns, with_samples=True, custom_camera_stamps=None):
    store = bagio.make_typestore()
    fac = bagio.MessageFactory(store)
    nusc = ev.load_nuscenes(ds.dataroot, ds.version)
    writer = bagio.open_writer(path)
    writer.open()
    try:
        conn_sample = writer.add_connection(bagio.SAMPLE_TOPIC, bagio.SAMPLE_INFO, typestore=store)
        conn_sem = writer.add_connection(bagio.SEMANTIC_TOPIC, bagio.SEMANTIC_OCCUPANCY, typestore=store)
        records = []
        for scene in nusc.scene:
            for i, token in enumerate(ev.scene_sample_tokens(nusc, scene["token"])):
                stamp = nusc.get("sample", token)["timestamp"] * 1000
                cams = {KEY_CAMERA: stamp + stamp_offset_ns}
                records.append(bagio.SampleRecord(stamp, token, scene["name"], scene["token"], i, cams))
                if with_samples:
                    msg = fac.sample_info(stamp, token, scene["name"], scene["token"], i)
                    writer.write(conn_sample, stamp, bagio.serialize(store, msg, bagio.SAMPLE_INFO))
                out = fac.semantic_occupancy(stamp + stamp_offset_ns, preds[token], source="flashocc-r50-M0")
                writer.write(
                    conn_sem, stamp + stamp_offset_ns + 1, bagio.serialize(store, out, bagio.SEMANTIC_OCCUPANCY)
                )
        if custom_camera_stamps:
            writer.set_custom_data(bagio.SAMPLES_CUSTOM_KEY, bagio.samples_to_custom_data(records))
    finally:
        writer.close()


def test_bag_input_matches_prediction_folder(data, tmp_path, capsys):
    ds, pred_dir, preds = data
    assert main(["all", "--pred-dir", str(pred_dir), *_common(ds), "--json", str(tmp_path / "dir.json")]) == 0
    reference = json.loads((tmp_path / "dir.json").read_text())["summary"]
    # node outputs stamped at the key camera image, 3 ms after the sample; sample identities recorded in the bag
    _write_bag(tmp_path / "run", ds, preds, 3_000_000)
    rc = main(["all", "--pred-bag", str(tmp_path / "run"), *_common(ds), "--json", str(tmp_path / "bag.json")])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "bag.json").read_text())["summary"] == reference
    # exact join through the converted bag's keyframe camera stamps (outputs 60 ms late: beyond the tolerance)
    _write_bag(tmp_path / "late", ds, preds, 60_000_000, with_samples=False)
    _write_bag(tmp_path / "source", ds, preds, 60_000_000, custom_camera_stamps=True)
    assert main(["miou", "--pred-bag", str(tmp_path / "late"), *_common(ds)]) == 2
    assert "no /nuscenes/sample samples" in capsys.readouterr().err
    rc = main(
        ["miou", "--pred-bag", str(tmp_path / "late"), "--source-bag", str(tmp_path / "source"), *_common(ds),
         "--json", str(tmp_path / "exact.json")]
    )  # fmt: skip
    assert rc == 0
    exact = json.loads((tmp_path / "exact.json").read_text())
    assert exact["num_samples"] == 6 and exact["summary"]["mIoU"] == reference["mIoU"]
    assert main(["raypq", "--pred-bag", str(tmp_path / "run"), *_common(ds)]) == 2
    assert "RayPQ needs flashocc_ros/msg/PanopticOccupancy" in capsys.readouterr().err


def test_predictions_are_ordered_by_time_and_limit(data, tmp_path):
    ds, pred_dir, _ = data
    assert (
        main(["miou", "--pred-dir", str(pred_dir), *_common(ds), "--limit", "2", "--json", str(tmp_path / "l.json")])
        == 0
    )
    assert json.loads((tmp_path / "l.json").read_text())["num_samples"] == 2
    assert np.isfinite(json.loads((tmp_path / "l.json").read_text())["summary"]["mIoU"])


def test_flashocc_predict_then_eval(data, tmp_path, capsys):
    """Offline batch prediction from the dataset (untrained deterministic M0 weights, PyTorch on CPU) -> eval."""
    from flashocc_ros.tools.predict import main as predict

    ds = data[0]
    out = tmp_path / "preds"
    common = ["--dataroot", str(ds.dataroot), "--version", ds.version, "--split", "mini_val", "--out", str(out)]
    assert predict([*common, "--variant", "M0", "--backend", "pytorch", "--limit", "1", "--no-progress"]) == 0
    (token_file,) = out.glob("*.npz")
    assert token_file.stem == ds.sample_tokens[0]  # the first keyframe of the first mini_val scene
    pred = ev.load_prediction(token_file)
    assert pred.semantic.shape == (200, 200, 16) and pred.semantic.max() <= FREE_INDEX
    before = token_file.stat().st_mtime_ns
    assert predict([*common, "--variant", "M0", "--backend", "pytorch", "--limit", "1", "--no-progress"]) == 0
    assert token_file.stat().st_mtime_ns == before  # resumable: existing predictions are kept
    assert "wrote 0 predictions" in capsys.readouterr().out
    assert main(["all", "--pred-dir", str(out), *_common(ds), "--no-progress"]) == 0
    assert "1 samples: mIoU" in capsys.readouterr().out
    assert predict([*common, "--variant", "X9"]) == 2
    assert "unknown model variant 'X9'" in capsys.readouterr().err


def test_panoptic_bag_gives_the_same_raypq_as_files(data, tmp_path):
    from scipy import ndimage

    from flashocc_ros.config import RAYPQ_THING_CLASS_INDICES

    ds = data[0]
    nusc = ev.load_nuscenes(ds.dataroot, ds.version)
    tokens = list(ds.samples_by_scene[ds.scene_names[0]])
    pano_gt, pred_dir = tmp_path / "occ3d_panoptic", tmp_path / "preds"
    grids = {}
    for t in tokens:
        entry = ev.index_ground_truth(ds.occ3d_gts_dir)[t]
        gt = ev.load_ground_truth(entry.path)
        instances, _ = ndimage.label(np.isin(gt.semantics, RAYPQ_THING_CLASS_INDICES))
        (pano_gt / entry.scene_name / t).mkdir(parents=True)
        np.savez(pano_gt / entry.scene_name / t / "labels.npz", semantics=gt.semantics, mask_camera=gt.mask_camera,
                 mask_lidar=gt.mask_lidar, instances=instances)  # fmt: skip
        sem = gt.semantics.copy()
        sem[np.roll(instances == 1, 1, axis=1)] = CAR  # one object a bit wider in the prediction
        pano = np.where(np.isin(sem, RAYPQ_THING_CLASS_INDICES), np.roll(instances, 1, axis=1) + 17, sem)
        grids[t] = (sem, pano.astype(np.int32))
        ev.write_prediction(pred_dir / f"{t}.npz", *grids[t])
    store = bagio.make_typestore()
    fac = bagio.MessageFactory(store)
    writer = bagio.open_writer(tmp_path / "pano_run")
    writer.open()
    try:
        conn_sample = writer.add_connection(bagio.SAMPLE_TOPIC, bagio.SAMPLE_INFO, typestore=store)
        conn_pano = writer.add_connection(bagio.PANOPTIC_TOPIC, bagio.PANOPTIC_OCCUPANCY, typestore=store)
        for i, t in enumerate(tokens):
            stamp = nusc.get("sample", t)["timestamp"] * 1000
            info = fac.sample_info(stamp, t, ds.scene_names[0], nusc.get("sample", t)["scene_token"], i)
            writer.write(conn_sample, stamp, bagio.serialize(store, info, bagio.SAMPLE_INFO))
            sem, pano = grids[t]
            msg = fac.T[bagio.PANOPTIC_OCCUPANCY](
                semantic=fac.semantic_occupancy(stamp + 2_000_000, sem, source="panoptic-flashocc-r50-depth-tiny-pano"),
                mode="corrected",
                panoptic=pano.ravel().astype(np.uint16),
                instances=[],
            )
            writer.write(conn_pano, stamp + 2_000_000, bagio.serialize(store, msg, bagio.PANOPTIC_OCCUPANCY))
    finally:
        writer.close()
    common = ["--gt-dir", str(ds.occ3d_gts_dir), "--pano-gt-dir", str(pano_gt), *_common(ds)[2:], "--no-progress"]
    assert main(["all", "--pred-dir", str(pred_dir), *common, "--json", str(tmp_path / "dir.json")]) == 0
    assert main(["all", "--pred-bag", str(tmp_path / "pano_run"), *common, "--json", str(tmp_path / "bag.json")]) == 0
    from_dir = json.loads((tmp_path / "dir.json").read_text())["summary"]
    from_bag = json.loads((tmp_path / "bag.json").read_text())["summary"]
    assert set(from_dir) >= {"mIoU", "RayIoU", "RayPQ", "RayPQ@1"}
    assert from_bag == from_dir
    assert 0 < from_dir["RayPQ"] < 100


def _pred_dir_with(tmp_path, preds, name, transform):
    folder = tmp_path / name
    folder.mkdir()
    for token, sem in preds.items():
        np.savez(folder / f"{token}.npz", pred=transform(sem))
    return folder


@pytest.mark.parametrize("dtype", [bool, np.float32])
def test_wrong_dtype_prediction_is_an_error_naming_the_dtype(data, tmp_path, capsys, dtype):
    ds, _, preds = data
    folder = _pred_dir_with(tmp_path, preds, "preds", lambda sem: (sem != FREE_INDEX).astype(dtype))
    out = tmp_path / "r.json"
    assert main(["miou", "--pred-dir", str(folder), "--gt-dir", str(ds.occ3d_gts_dir), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"key 'pred': dtype {np.dtype(dtype).name}, expected integer class indices" in err
    assert not out.exists()


def test_damaged_or_pickled_npz_is_the_one_line_error(data, tmp_path, capsys):
    ds, pred_dir, preds = data
    token = next(iter(preds))
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / f"{token}.npz", pred=preds[token])
    raw = bytearray((bad / f"{token}.npz").read_bytes())
    raw[300] ^= 0xFF  # inside the stored array: the zip member's CRC no longer matches
    (bad / f"{token}.npz").write_bytes(bytes(raw))
    assert main(["miou", "--pred-dir", str(bad), "--gt-dir", str(ds.occ3d_gts_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{token}.npz: key 'pred' cannot be read (BadZipFile: Bad CRC-32" in err and "Traceback" not in err
    np.savez(bad / f"{token}.npz", pred=np.array([{"x": 1}], dtype=object))
    assert main(["miou", "--pred-dir", str(bad), "--gt-dir", str(ds.occ3d_gts_dir), "--no-progress"]) == 2
    assert f"{token}.npz: key 'pred' is a pickled object array; refused" in capsys.readouterr().err


def test_scoring_a_subset_says_how_many_samples_have_no_prediction(data, tmp_path, capsys):
    ds, _, preds = data
    half = dict(list(preds.items())[:3])
    folder = _pred_dir_with(tmp_path, half, "half", lambda sem: sem)
    assert main(["miou", "--pred-dir", str(folder), "--gt-dir", str(ds.occ3d_gts_dir), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"note: 3 of the 6 ground-truth samples in {ds.occ3d_gts_dir} have no prediction; scoring the 3" in (
        captured.err
    )
    assert "3 samples: mIoU" in captured.out


def test_ground_truth_values_outside_the_classes_are_an_error(data, tmp_path, capsys):
    """Occ3D GT holds 0..17 only; another value means a wrong file, so it is refused (docs/evaluation.md)."""
    ds, pred_dir, preds = data
    token = next(iter(preds))
    entry = ev.index_ground_truth(ds.occ3d_gts_dir)[token]
    gts = tmp_path / "gts" / entry.scene_name / token
    gts.mkdir(parents=True)
    with np.load(entry.path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["semantics"][0, 0, 0] = 255
    np.savez(gts / "labels.npz", **arrays)
    one = _pred_dir_with(tmp_path, {token: preds[token]}, "one", lambda sem: sem)
    assert main(["miou", "--pred-dir", str(one), "--gt-dir", str(tmp_path / "gts"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "labels.npz: key 'semantics': class index 255 is outside 0..17" in err and "Traceback" not in err
