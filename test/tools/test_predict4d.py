"""flashocc-predict with a temporal variant: the history is the dataset's previous keyframes the official way
(SPEC4D 2), each keyframe is encoded once, and every prediction equals the all-frames-at-once answer
(TemporalPipeline.run_frames) on frames assembled here from the nuScenes tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import flashocc_ros.network.loading
from flashocc_ros.config import CAMERA_NAMES, load_config
from flashocc_ros.metrics import evaluation as ev
from flashocc_ros.tools.predict import main as predict
from flashocc_ros.tools.predict import official_adjacent
from test.model4d_helpers import P2, seed0_model_4d


@pytest.mark.parametrize(
    "index, count, expected",
    [
        (0, 2, [None, None]),  # the split's first keyframe: max(0 - k, 0) is itself -> the current frame
        (1, 2, [0, 0]),  # max(1 - 2, 0) = 0 is of the same scene: the official clamp, not the current frame
        (3, 2, [2, 1]),
        (4, 2, [None, None]),  # first keyframe of scene b: the keyframes before are scene a's -> current
        (5, 2, [4, None]),
        (6, 8, [5, 4, None, None, None, None, None, None]),
        (3, 8, [2, 1, 0, 0, 0, 0, 0, 0]),
        (2, 1, [1]),
    ],
)
def test_official_adjacent_frames(index, count, expected):
    scenes = ["a"] * 4 + ["b"] * 3  # keyframes sorted by time
    assert official_adjacent(scenes, index, count) == expected


def _official_inputs(nusc, dataroot: Path, token: str) -> dict[str, np.ndarray]:
    """IN.npz layout of one sample, restated from the nuScenes tables: frames [current, previous keyframe by the
    sample's prev link, or the current one when there is none]; imgs camera-major, matrices frame-major, the
    current frame's intrinsics / post-augmentation repeated."""
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion

    from flashocc_ros.network.preprocess import augmentation_for, preprocess_jpeg_exact

    prev = nusc.get("sample", token)["prev"]
    frames = [token, prev or token]
    imgs = np.zeros((6, 2, 3, 256, 704), np.float32)
    s2e = np.zeros((2, 6, 4, 4))
    e2g = np.zeros((2, 6, 4, 4))
    intrins = np.zeros((6, 3, 3))
    for k, frame in enumerate(frames):
        sample = nusc.get("sample", frame)
        for n, cam in enumerate(CAMERA_NAMES):
            sd = nusc.get("sample_data", sample["data"][cam])
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            pose = nusc.get("ego_pose", sd["ego_pose_token"])
            preprocess_jpeg_exact((dataroot / sd["filename"]).read_bytes(), imgs[n, k])
            s2e[k, n] = transform_matrix(np.array(cs["translation"]), Quaternion(cs["rotation"]))
            e2g[k, n] = transform_matrix(np.array(pose["translation"]), Quaternion(pose["rotation"]))
            if k == 0:
                intrins[n] = cs["camera_intrinsic"]
    aug = augmentation_for((900, 1600))
    return {
        "imgs": imgs.reshape(1, 12, 3, 256, 704),
        "sensor2egos": s2e.reshape(1, 12, 4, 4),
        "ego2globals": e2g.reshape(1, 12, 4, 4),
        "intrins": np.tile(intrins, (2, 1, 1))[None],
        "post_rots": np.tile(aug.post_rot, (12, 1, 1))[None],
        "post_trans": np.tile(aug.post_tran, (12, 1))[None],
        "bda": np.eye(3),
    }


@pytest.mark.slow
def test_temporal_predictions_stream_by_scene_and_equal_all_frames_at_once(tmp_path, monkeypatch, capsys):
    from flashocc_ros.dataset.synthetic import make_synthetic_nuscenes
    from flashocc_ros.inference.temporal import TemporalPipeline

    ds = make_synthetic_nuscenes(
        tmp_path / "nusc", num_scenes=2, samples_per_scene=2, camera_sweeps=False, lidar=False, occ3d_gts=False
    )
    (a0, a1), (b0, _) = (ds.samples_by_scene[name] for name in ds.scene_names)
    model = seed0_model_4d(P2)
    monkeypatch.setattr(flashocc_ros.network.loading, "load_model", lambda variant, *a, **k: seed0_model_4d(variant))
    encoded = []
    encode = model.encode_frame
    monkeypatch.setattr(model, "encode_frame", lambda img: encoded.append(img.shape) or encode(img))

    out = tmp_path / "preds"
    out.mkdir()
    (out / f"{a0}.npz").write_bytes(b"kept")  # an existing prediction is kept, yet its frame is history of a1
    argv = ["--dataroot", str(ds.dataroot), "--version", ds.version, "--split", "mini_val", "--out", str(out)]
    argv += ["--variant", "P2", "--device", "cpu", "--limit", "3"]
    assert predict(argv) == 0
    assert "wrote 2 predictions" in capsys.readouterr().out
    assert len(encoded) == 3 and all(s[0] == 6 for s in encoded)  # a0 (history only), a1, b0: once each
    assert (out / f"{a0}.npz").read_bytes() == b"kept"
    assert sorted(p.stem for p in out.glob("*.npz")) == sorted([a0, a1, b0])

    nusc = ev.load_nuscenes(ds.dataroot, ds.version)
    cfg = load_config(overrides={"model": {"variant": P2, "device": "cpu"}})
    reference = TemporalPipeline(cfg, model=model)
    for token in (a1, b0):  # b0: the first keyframe of its scene (previous frame = itself), a1: a0 as history
        expected = reference.run_frames(_official_inputs(nusc, Path(ds.dataroot), token))
        got = ev.load_prediction(out / f"{token}.npz", need_instances=True)
        np.testing.assert_array_equal(got.semantic, expected.semantic, err_msg=token)
        np.testing.assert_array_equal(got.instances, expected.panoptic, err_msg=token)
