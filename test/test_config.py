"""Config: constants, YAML round trip, validation errors that name the bad key and value."""

import pytest
import yaml

from flashocc_ros import config as C


def test_grid_constants():
    g = C.OCC_GRID
    assert g.shape == (200, 200, 16)
    assert g.num_voxels == 640_000
    for lo, hi, n in zip(g.lower, g.upper, g.shape):
        assert hi - lo == pytest.approx(n * g.voxel_size)
    assert g.voxel_center(0, 0, 0) == pytest.approx((-39.8, -39.8, -0.8))
    assert g.voxel_center(199, 199, 15) == pytest.approx((39.8, 39.8, 5.2))


def test_classes_cameras_variants():
    assert len(C.CLASS_NAMES) == C.NUM_CLASSES == 18
    assert C.CLASS_NAMES[C.FREE_INDEX] == "free" and C.FREE_INDEX == 17
    assert len(C.CLASS_COLORS) == C.NUM_CLASSES
    assert C.CAMERA_NAMES[0] == C.KEY_CAMERA == "CAM_FRONT_LEFT" and len(C.CAMERA_NAMES) == 6
    # head order car, truck, construction_vehicle, bus, trailer, barrier, motorcycle, bicycle, pedestrian, cone
    assert C.HEAD_TO_OCC == (4, 10, 5, 3, 9, 1, 6, 2, 7, 8)
    assert sorted(C.VARIANTS) == sorted(
        [
            "flashocc-r50-M0",
            "flashocc-r50",
            "panoptic-flashocc-r50-depth-tiny-pano",
            "panoptic-flashocc-r50-depth-pano",
            "flashocc-r50-4d-stereo",
            "panoptic-flashocc-r50-depth4d-pano",
            "panoptic-flashocc-r50-depth4d-longterm8f-pano",
        ]
    )
    assert C.get_variant("M0").depth_bins == 44 and C.get_variant("flashocc-r50").depth_bins == 88
    assert C.get_variant("PF").context_channels == 80 and C.get_variant("PT").panoptic
    with pytest.raises(ValueError, match="unknown model variant 'nope'"):
        C.get_variant("nope")


def test_yaml_round_trip(tmp_path):
    cfg = C.FlashOccConfig()
    cfg.model.variant = "panoptic-flashocc-r50-depth-tiny-pano"
    cfg.model.pano_mode = "official"
    cfg.sync.max_spread_ms = 75.5
    cfg.outputs.publish_markers = True
    path = tmp_path / "cfg.yaml"
    C.save_config(cfg, path)
    again = C.load_config(path)
    assert again == cfg
    assert again.variant.short == "PT"


def test_ros_parameters_file_is_accepted(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"flashocc_node": {"ros__parameters": {"model": {"variant": "flashocc-r50"}}}}))
    assert C.load_config(path).model.variant == "flashocc-r50"


def test_flatten_unflatten_round_trip():
    d = C.to_dict(C.FlashOccConfig())
    flat = C.flatten(d)
    assert flat["model.variant"] == C.DEFAULT_VARIANT and "sync.max_spread_ms" in flat
    assert C.unflatten(flat) == d


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": {"variant": "flashocc-r101"}}, r"model\.variant: unknown variant 'flashocc-r101'"),
        ({"model": {"backend": "tvm"}}, r"model\.backend: 'tvm' is not one of"),
        ({"model": {"score_threshold": 1.5}}, r"model\.score_threshold: 1\.5"),
        ({"model": {"device": "gpu0"}}, r"model\.device: 'gpu0'"),
        ({"model": {"preprocess_threads": -1}}, r"model\.preprocess_threads: -1 is outside"),
        ({"sync": {"max_spread_ms": -1}}, r"sync\.max_spread_ms: -1\.0"),
        ({"sync": {"queue_size": "four"}}, r"sync\.queue_size: expected an integer, got 'four'"),
        ({"outputs": {"publish_markers": "yes"}}, r"outputs\.publish_markers: expected true/false, got 'yes'"),
        ({"cameras": {"transport": "h264"}}, r"cameras\.transport: 'h264'"),
        ({"cameras": {"image_topic": "/cam/image"}}, r"cameras\.image_topic: '/cam/image' must contain"),
        ({"cameras": {"names": ["CAM_FRONT"]}}, r"cameras\.names: \['CAM_FRONT'\]"),
        ({"model": {"varient": "x"}}, r"unknown key model\.varient \(value 'x'\)"),
        ({"modle": {}}, r"unknown key modle"),
    ],
)
def test_validation_errors_name_key_and_value(overrides, message):
    with pytest.raises(C.ConfigError, match=message):
        C.load_config(overrides=overrides)


def test_camera_topics_follow_pattern():
    topics = C.CameraConfig().topics()
    assert [t[0] for t in topics] == list(C.CAMERA_NAMES)
    assert topics[0][1] == "/CAM_FRONT_LEFT/image/compressed"
    assert topics[0][2] == "/CAM_FRONT_LEFT/camera_info"


def test_non_mapping_yaml_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(C.ConfigError, match="top level must be a mapping"):
        C.load_config(path)
