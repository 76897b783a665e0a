"""The synthetic nuScenes-format dataset: loadable by nuscenes-devkit, images/lidar/GT consistent with the tables."""

from __future__ import annotations

import numpy as np
import pytest
import simplejpeg
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box, view_points
from pyquaternion import Quaternion

from flashocc_ros.config import CAMERA_NAMES, CLASS_NAMES, OCC_GRID
from flashocc_ros.dataset.synthetic import CAMERA_CALIBRATION, load_synthetic_nuscenes, make_synthetic_nuscenes

OCC_CLASS_OF_CATEGORY = {
    "vehicle.car": "car",
    "vehicle.truck": "truck",
    "human.pedestrian.adult": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "movable_object.barrier": "barrier",
}


@pytest.fixture(scope="module")
def nusc(synthetic_nuscenes):
    return NuScenes(synthetic_nuscenes.version, str(synthetic_nuscenes.dataroot), verbose=False)


def test_devkit_loads_the_tables_with_keyframes_and_sweeps(nusc, synthetic_nuscenes):
    ds = synthetic_nuscenes
    assert ds.scene_names == ("scene-0103", "scene-0916")
    assert [s["name"] for s in nusc.scene] == list(ds.scene_names)
    assert len(nusc.sample) == len(ds.sample_tokens) == 6
    cams = [sd for sd in nusc.sample_data if sd["sensor_modality"] == "camera"]
    lidar = [sd for sd in nusc.sample_data if sd["channel"] == "LIDAR_TOP"]
    # 3 keyframes per scene: (2 intervals x 6 frames + 1) per camera, (2 x 10 + 1) lidar sweeps.
    assert len(cams) == ds.num_camera_frames == 2 * 6 * 13
    assert len(lidar) == ds.num_lidar_frames == 2 * 21
    assert sum(sd["is_key_frame"] for sd in cams) == 6 * 6
    for sample in nusc.sample:
        assert set(sample["data"]) == {*CAMERA_NAMES, "LIDAR_TOP"}
        assert nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["timestamp"] == sample["timestamp"]
        spread = [nusc.get("sample_data", sample["data"][c])["timestamp"] - sample["timestamp"] for c in CAMERA_NAMES]
        assert 0 < min(spread) and max(spread) < 50_000
    for sd in nusc.sample_data:  # every sample_data has its own ego pose
        assert nusc.get("ego_pose", sd["ego_pose_token"])["timestamp"] == sd["timestamp"]
    cs = nusc.get(
        "calibrated_sensor", nusc.get("sample_data", nusc.sample[0]["data"]["CAM_BACK"])["calibrated_sensor_token"]
    )
    assert cs["camera_intrinsic"][0][0] == CAMERA_CALIBRATION["CAM_BACK"].intrinsic[0][0]


def test_images_are_1600x900_jpegs_showing_the_annotated_boxes(nusc):
    sample = nusc.sample[0]
    checked = 0
    for cam in CAMERA_NAMES:
        path, boxes, K = nusc.get_sample_data(sample["data"][cam])
        with open(path, "rb") as f:
            rgb = simplejpeg.decode_jpeg(f.read())
        assert rgb.shape == (900, 1600, 3)
        for box in boxes:
            if box.center[2] < 3 or box.name != "vehicle.truck" and box.name != "vehicle.car":
                continue
            u, v = view_points(box.center[:, None], K, normalize=True)[:2, 0].round().astype(int)
            if 20 <= u < 1580 and 20 <= v < 880:
                # Cars are blue-ish, trucks purple in the class colours: blue dominates green at the box centre.
                r, g, b = rgb[v, u].astype(int)
                assert b > g + 40, (cam, box.name, (r, g, b))
                checked += 1
    assert checked >= 2


def test_lidar_points_hit_the_annotated_boxes(nusc):
    sample = nusc.sample[1]
    path, boxes, _ = nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
    pc = LidarPointCloud.from_file(path)
    assert pc.points.shape[0] == 4 and pc.points.shape[1] > 5000
    for box in boxes:
        ann = nusc.get("sample_annotation", box.token)
        inside = points_in_box(box, pc.points[:3], wlh_factor=1.02).sum()
        assert ann["num_lidar_pts"] > 0
        assert abs(int(inside) - ann["num_lidar_pts"]) <= 0.1 * ann["num_lidar_pts"] + 2


def test_occ3d_labels_agree_with_annotations_in_the_lidar_ego_frame(nusc, synthetic_nuscenes):
    for scene_name, tokens in synthetic_nuscenes.samples_by_scene.items():
        for token in tokens:
            gt = np.load(synthetic_nuscenes.gt_path(scene_name, token))
            assert set(gt.files) == {"semantics", "mask_camera", "mask_lidar"}
            for key in gt.files:
                assert gt[key].shape == OCC_GRID.shape and gt[key].dtype == np.uint8
            sem = gt["semantics"]
            assert sem.max() <= 17 and (sem == CLASS_NAMES.index("driveable_surface")).sum() > 1000
            assert 0.3 < gt["mask_camera"].mean() < 1.0
            sample = nusc.get("sample", token)
            pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
            for ann_token in sample["anns"]:
                box = nusc.get_box(ann_token)
                box.translate(-np.array(pose["translation"]))
                box.rotate(Quaternion(pose["rotation"]).inverse)
                idx = np.floor((box.center - np.array(OCC_GRID.lower)) / OCC_GRID.voxel_size).astype(int)
                idx[2] = 3  # first layer above the ground surface
                want = CLASS_NAMES.index(OCC_CLASS_OF_CATEGORY[box.name])
                near = sem[idx[0] - 1 : idx[0] + 2, idx[1] - 1 : idx[1] + 2, idx[2]]
                assert (near == want).any(), (scene_name, box.name, idx)


def test_rebuild_is_a_no_op_and_other_parameters_are_refused(synthetic_nuscenes):
    again = make_synthetic_nuscenes(synthetic_nuscenes.dataroot)
    assert again == load_synthetic_nuscenes(synthetic_nuscenes.dataroot) == synthetic_nuscenes
    with pytest.raises(FileExistsError, match="other parameters"):
        make_synthetic_nuscenes(synthetic_nuscenes.dataroot, samples_per_scene=2)


def test_keyframes_only_without_lidar_files(tmp_path):
    ds = make_synthetic_nuscenes(tmp_path, num_scenes=1, samples_per_scene=2, camera_sweeps=False, lidar=False)
    nusc = NuScenes(ds.version, str(tmp_path), verbose=False)
    assert len([sd for sd in nusc.sample_data if sd["sensor_modality"] == "camera"]) == 12
    assert not (tmp_path / "samples" / "LIDAR_TOP").exists()
    assert all(ds.gt_path("scene-0103", t).exists() for t in ds.sample_tokens)
