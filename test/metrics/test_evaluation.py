"""Evaluation plumbing on the synthetic nuScenes dataset: lidar origins from the devkit, prediction folders,
worker processes, reports, and clear errors for bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pyquaternion import Quaternion

from flashocc_ros.config import FREE_INDEX, OCC_GRID, RAYPQ_THING_CLASS_INDICES
from flashocc_ros.metrics import evaluation as ev

CAR = 4


@pytest.fixture(scope="module")
def nusc(synthetic_nuscenes):
    return ev.load_nuscenes(synthetic_nuscenes.dataroot, synthetic_nuscenes.version)


@pytest.fixture(scope="module")
def gt_index(synthetic_nuscenes):
    return ev.index_ground_truth(synthetic_nuscenes.occ3d_gts_dir)


@pytest.fixture(scope="module")
def perfect_preds(tmp_path_factory, gt_index):
    out = tmp_path_factory.mktemp("perfect_preds")
    for token, entry in gt_index.items():
        ev.write_prediction(out / f"{token}.npz", ev.load_ground_truth(entry.path).semantics)
    return out


def _pose(translation, rotation) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Quaternion(rotation).rotation_matrix
    m[:3, 3] = translation
    return m


def test_ground_truth_index_matches_the_dataset(synthetic_nuscenes, gt_index):
    assert set(gt_index) == set(synthetic_nuscenes.sample_tokens)
    token = synthetic_nuscenes.sample_tokens[0]
    assert gt_index[token].scene_name == synthetic_nuscenes.scene_names[0]
    gt = ev.load_ground_truth(gt_index[token].path)
    assert gt.semantics.shape == OCC_GRID.shape and gt.mask_camera.dtype == bool


def test_lidar_origins_from_devkit_match_a_direct_computation(synthetic_nuscenes, nusc):
    origins = ev.lidar_origins(nusc, synthetic_nuscenes.sample_tokens)
    for scene in nusc.scene:
        frames = ev.scene_sample_tokens(nusc, scene["token"])
        assert frames == list(synthetic_nuscenes.samples_by_scene[scene["name"]])
        poses = []
        for t in frames:  # independent: tables read directly, inverse of a rigid transform analytically
            sd = nusc.get("sample_data", nusc.get("sample", t)["data"]["LIDAR_TOP"])
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            ep = nusc.get("ego_pose", sd["ego_pose_token"])
            poses.append((_pose(ep["translation"], ep["rotation"]) @ _pose(cs["translation"], cs["rotation"]), cs))
        for ref, token in enumerate(frames):
            ref_pose, ref_cs = poses[ref]
            inv = np.eye(4)
            inv[:3, :3] = ref_pose[:3, :3].T
            inv[:3, 3] = -ref_pose[:3, :3].T @ ref_pose[:3, 3]
            ego_from_lidar = _pose(ref_cs["translation"], ref_cs["rotation"])
            expected = np.array([(ego_from_lidar @ inv @ p)[:3, 3] for p, _ in poses])
            got = origins[token]
            assert got.dtype == np.float64 and got.shape == (len(frames), 3)  # all within 39 m, fewer than 8
            np.testing.assert_allclose(got, expected, atol=1e-5)  # float32 rounding of the lidar-frame offset
            np.testing.assert_array_equal(got[ref], ref_cs["translation"])  # own origin: exactly the lidar mount


def test_origin_candidates_round_the_lidar_frame_offset_to_float32():
    a = np.eye(4)
    b = np.eye(4)
    b[:3, 3] = [1.0 / 3.0, 2.0 / 7.0, 0.1]
    ego_from_lidar = np.eye(4)
    ego_from_lidar[:3, 3] = [0.9, 0.0, 1.8]
    cands = ev.origin_candidates([a, b], ego_from_lidar, ref=0)
    np.testing.assert_array_equal(cands[0], [0.9, 0.0, 1.8])
    np.testing.assert_array_equal(cands[1], np.float32(b[:3, 3]).astype(np.float64) + [0.9, 0.0, 1.8])


def _options(*metrics, device="cpu"):
    return ev.ScoringOptions(metrics=metrics, mask_mode="camera", device=device)


def _jobs(tokens, gt_index, pred_dir, origins=None):
    return [ev.SampleJob(t, gt_index[t].path, pred_dir / f"{t}.npz", (origins or {}).get(t)) for t in tokens]


def test_perfect_predictions_score_100(synthetic_nuscenes, nusc, gt_index, perfect_preds):
    tokens = list(synthetic_nuscenes.sample_tokens)
    origins = ev.lidar_origins(nusc, tokens)
    result = ev.evaluate(_jobs(tokens, gt_index, perfect_preds, origins), _options("miou", "rayiou"), progress=False)
    assert result.num_samples == len(tokens) and result.num_rays > 10000
    assert result.miou.miou == 1.0 and result.rayiou.rayiou == 1.0
    present = ~np.isnan(result.miou.per_class[:FREE_INDEX])
    assert present[CAR] and present.sum() >= 5  # the synthetic world has several classes in view
    head = result.headline()
    assert head["mIoU"] == 100.0 and head["RayIoU@1"] == 100.0


def test_degraded_predictions_and_worker_processes(tmp_path, synthetic_nuscenes, nusc, gt_index):
    tokens = list(synthetic_nuscenes.sample_tokens)
    for i, t in enumerate(tokens):
        sem = ev.load_ground_truth(gt_index[t].path).semantics.copy()
        sem[sem == CAR] = FREE_INDEX  # cars missing
        sem = np.roll(sem, i % 2, axis=0)  # and every other sample shifted by 0.4 m
        ev.write_prediction(tmp_path / f"{t}.npz", sem)
    origins = ev.lidar_origins(nusc, tokens)
    opts = _options("miou", "rayiou")
    serial = ev.evaluate(_jobs(tokens, gt_index, tmp_path, origins), opts, progress=False)
    parallel = ev.evaluate(_jobs(tokens, gt_index, tmp_path, origins), opts, num_workers=2, progress=False)
    assert serial.miou.per_class[CAR] == 0.0
    assert np.nansum(serial.rayiou.per_class[:, CAR]) == 0.0
    assert 0.0 < serial.miou.miou < 1.0 and 0.0 < serial.rayiou.rayiou < 1.0
    np.testing.assert_array_equal(serial.miou.confusion, parallel.miou.confusion)
    np.testing.assert_array_equal(serial.rayiou.per_class, parallel.rayiou.per_class)
    assert serial.sample_tokens == parallel.sample_tokens == tokens


def test_raypq_on_panoptic_ground_truth(tmp_path, synthetic_nuscenes, nusc, gt_index):
    from scipy import ndimage

    tokens = list(synthetic_nuscenes.sample_tokens)[:2]
    pano_dir, pred_dir = tmp_path / "occ3d_panoptic", tmp_path / "preds"
    for t in tokens:
        entry = gt_index[t]
        gt = ev.load_ground_truth(entry.path)
        things = np.isin(gt.semantics, RAYPQ_THING_CLASS_INDICES)
        instances, _ = ndimage.label(things)
        out = pano_dir / entry.scene_name / t
        out.mkdir(parents=True)
        np.savez_compressed(
            out / "labels.npz",
            semantics=gt.semantics,
            mask_camera=gt.mask_camera,
            mask_lidar=gt.mask_lidar,
            instances=instances,
        )
        pano = np.where(things, instances + 17, gt.semantics).astype(np.int32)
        ev.write_prediction(pred_dir / f"{t}.npz", gt.semantics, pano)
    pano_index = ev.index_ground_truth(pano_dir)
    origins = ev.lidar_origins(nusc, tokens)
    result = ev.evaluate(_jobs(tokens, pano_index, pred_dir, origins), _options("raypq"), progress=False)
    assert result.raypq.raypq == 1.0
    assert not np.isnan(result.raypq.per_class[:, CAR]).any()
    with pytest.raises(ev.EvaluationError, match="instances"):
        ev.evaluate(_jobs(tokens, gt_index, pred_dir, origins), _options("raypq"), progress=False)


def test_reports_json_and_plot(tmp_path, synthetic_nuscenes, nusc, gt_index, perfect_preds):
    tokens = list(synthetic_nuscenes.sample_tokens)[:2]
    origins = ev.lidar_origins(nusc, tokens)
    result = ev.evaluate(_jobs(tokens, gt_index, perfect_preds, origins), _options("miou", "rayiou"), progress=False)
    ev.write_json(result, tmp_path / "out" / "r.json")
    ev.plot_per_class(result, tmp_path / "out" / "r.png")
    data = json.loads((tmp_path / "out" / "r.json").read_text())
    assert data["summary"]["mIoU"] == 100.0 and data["num_samples"] == 2
    assert data["per_class"]["car"]["IoU"] == 100.0
    assert data["per_class"]["others"]["IoU"] is None  # NaN -> null
    assert len(data["confusion_matrix"]["counts"]) == 18
    assert (tmp_path / "out" / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r.json", "r.png"]  # no temp files left
    table = ev.format_table(result)
    assert "driveable_surface" in table and "mIoU 100.00" in table and "RayIoU@4" in table


def test_bad_inputs_name_the_file_and_key(tmp_path, gt_index):
    token, entry = next(iter(gt_index.items()))
    np.savez(tmp_path / "nokey.npz", labels=np.zeros(OCC_GRID.shape, np.uint8))
    with pytest.raises(ev.EvaluationError, match=r"nokey\.npz: missing key 'pred'"):
        ev.load_prediction(tmp_path / "nokey.npz")
    np.savez(tmp_path / "shape.npz", pred=np.zeros((200, 200, 15), np.uint8))
    with pytest.raises(ev.EvaluationError, match=r"shape\.npz: key 'pred': shape \(200, 200, 15\), expected \(200, 2"):
        ev.load_prediction(tmp_path / "shape.npz")
    np.savez(tmp_path / "value.npz", pred=np.full(OCC_GRID.shape, 20, np.uint8))
    with pytest.raises(ev.EvaluationError, match=r"value\.npz: key 'pred': class index 20 is outside 0\.\.17"):
        ev.load_prediction(tmp_path / "value.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ev.EvaluationError, match=r"junk\.npz: not a readable"):
        ev.load_prediction(tmp_path / "junk.npz")
    ev.write_prediction(tmp_path / "good.npz", np.zeros(OCC_GRID.shape, np.uint8))
    with pytest.raises(ev.EvaluationError, match=r"good\.npz: missing key 'inst'"):
        ev.load_prediction(tmp_path / "good.npz", need_instances=True)
    with pytest.raises(ev.EvaluationError, match="no <scene>/<sample_token>/labels.npz"):
        ev.index_ground_truth(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ev.EvaluationError, match="no <sample_token>.npz"):
        ev.index_predictions(tmp_path / "empty")
    with pytest.raises(ev.EvaluationError, match="missing key 'instances'"):
        ev.load_ground_truth(entry.path, need_instances=True)
    zeros = ev.Prediction(np.zeros(OCC_GRID.shape, np.uint8))
    with pytest.raises(ev.EvaluationError, match="no lidar origins"):
        ev.score_sample(ev.SampleJob(token, entry.path, zeros), _options("rayiou"))
    scores = ev.score_sample(ev.SampleJob(token, entry.path, zeros), _options("miou"))
    assert scores.confusion.sum() == ev.load_ground_truth(entry.path).mask_camera.sum()
