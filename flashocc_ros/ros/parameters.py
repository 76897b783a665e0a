"""The node's ROS parameters: which are dynamic, their help texts and ranges, the node-only ones, their declaration
on a node (with clear errors for wrong types / values) and the check that names overrides matching no parameter.

The FlashOccConfig keys (``model.*``, ``cameras.*``, ``sync.*``, ``outputs.*``) take their defaults from
`config.FlashOccConfig` and their numeric ranges from `config.PARAMETER_RANGES`; `NODE_PARAMETERS` adds the
node-only ones (``qos.*``, ``diagnostics.*``, ``tf.*``). docs/node.md lists them all.
"""

from __future__ import annotations

import difflib
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

from flashocc_ros.config import (
    PARAMETER_RANGES,
    ConfigError,
    FlashOccConfig,
    Range,
    flatten,
    from_dict,
    to_dict,
    unflatten,
)

# Parameters that can change while running (everything else defines shapes, topics or the model: read-only).
DYNAMIC_PARAMETERS = {
    "sync.max_spread_ms",
    "sync.tf_timeout_s",
    "outputs.publish_semantic",
    "outputs.publish_panoptic",
    "outputs.publish_pointcloud",
    "outputs.publish_markers",
    "outputs.max_markers",
    "outputs.publish_timing",
}

PARAMETER_HELP = {
    "model.variant": "official config name of the model variant",
    "model.checkpoint": "official .pth checkpoint; empty = deterministic untrained weights",
    "model.engine": "TensorRT engine / ONNX file for those backends",
    "model.backend": "auto | tensorrt | onnxruntime | pytorch",
    "model.device": "auto | cpu | cuda | cuda:N (auto: cuda when a GPU is visible)",
    "model.precision": "fp32 | fp16 | int8",
    "model.engine_cache_dir": "where built engines are cached",
    "model.pano_mode": "panoptic post-processing: corrected | official",
    "model.score_threshold": "panoptic centre score threshold",
    "model.preprocess_threads": "threads decoding + preprocessing the six images; 0 = min(6, usable CPU cores)",
    "cameras.names": "camera names in network order (must be the nuScenes rig)",
    "cameras.transport": "compressed (CompressedImage JPEG) | raw (Image rgb8/bgr8)",
    "cameras.image_topic": "image topic pattern with {camera}",
    "cameras.info_topic": "CameraInfo topic pattern with {camera}",
    "cameras.calibration_file": "fixed-rig calibration YAML; empty = CameraInfo + TF",
    "sync.max_spread_ms": "largest stamp spread inside one six-camera set",
    "sync.queue_size": "frames kept per camera while assembling sets",
    "sync.tf_timeout_s": "dynamic transforms older than this (vs. the image stamp) are stale",
    "outputs.ego_frame": "frame of the output grids (camera->ego from TF)",
    "outputs.max_markers": "cap on marker cubes per frame",
    "temporal.history_tolerance_s": "temporal variants: history slot k = the stored frame within this of t - k*0.5 s",
    "temporal.history_max_frames": "temporal variants: frames kept in the history at most",
}

# Node-only parameters (not part of FlashOccConfig): name -> (default, description, range, read-only).
NODE_PARAMETERS: dict[str, tuple[Any, str, Range | None, bool]] = {
    "qos.input_depth": (
        5,
        "history depth of the image / CameraInfo subscriptions (sensor-data QoS)",
        Range(1, 100),
        True,
    ),
    "qos.output_depth": (2, "history depth of the (reliable) output publishers", Range(1, 100), True),
    "diagnostics.warn_interval_s": (
        5.0,
        "the same warning is printed at most once per interval",
        Range(0.0, 3600.0),
        False,
    ),
    "diagnostics.camera_timeout_s": (
        2.0,
        "a camera silent this long while others publish is reported",
        Range(0.1, 600.0),
        False,
    ),
    "diagnostics.window_s": (
        10.0,
        "/diagnostics measures output rate, latency and dropped sets over this sliding window",
        Range(1.0, 600.0),
        False,
    ),
    "diagnostics.max_dropped_fraction": (
        0.5,
        "/diagnostics warns when more than this fraction of the camera sets in the window were dropped",
        Range(0.0, 1.0),
        False,
    ),
    "tf.use_tf2_ros": (True, "use tf2_ros where installed (false: the built-in /tf_static + /tf reader)", None, True),
    "tf.world_frame": (
        "map",
        "fixed frame of the ego poses: each camera uses the ego pose (world <- ego) at its own stamp, as the official "
        "pipeline does; empty = off (one shared ego pose for the six cameras)",
        None,
        True,
    ),
    "tf.pose_tolerance_m": (
        0.0,
        "keep the current voxel-pooling indices while every camera's pose in the key ego frame moved less than this "
        "(translation plus rotation as displacement at 50 m); 0 = exact, recompute whenever the poses change",
        Range(0.0, 1.0),
        False,
    ),
}


def undeclared_overrides(overrides, declared, is_declared=None) -> list[tuple[str, str | None]]:
    """(name, closest declared name or None) for every parameter override that is not declared, e.g. the typo
    `sync.max_spred_ms` -> `sync.max_spread_ms`. `is_declared` also accepts parameters declared elsewhere (rclpy's
    use_sim_time); rclpy's qos_overrides.* are not parameters of ours to judge."""
    declared = list(declared)
    out = []
    for name in sorted(overrides):
        if name in declared or name.startswith("qos_overrides.") or (is_declared is not None and is_declared(name)):
            continue
        close = difflib.get_close_matches(name, declared, n=1, cutoff=0.6)
        out.append((name, close[0] if close else None))
    return out


def declare_parameters(node: Any) -> tuple[FlashOccConfig, dict[str, Any]]:
    """Declare every parameter on `node`; returns the validated FlashOccConfig and the node-only values.
    ConfigError names the parameter and the value; overrides matching no parameter get a warning."""
    values: dict[str, Any] = {}
    for name, default in flatten(to_dict(FlashOccConfig())).items():
        desc = descriptor(
            name, default, PARAMETER_HELP.get(name, ""), PARAMETER_RANGES.get(name), name not in DYNAMIC_PARAMETERS
        )
        values[name] = _declare(node, name, default, desc)
    node_params: dict[str, Any] = {}
    for name, (default, help_text, value_range, read_only) in NODE_PARAMETERS.items():
        node_params[name] = _declare(node, name, default, descriptor(name, default, help_text, value_range, read_only))
    cfg = from_dict(FlashOccConfig, unflatten(values)).validate()
    for name, suggestion in undeclared_overrides(_overrides(node), [*values, *node_params], node.has_parameter):
        hint = f"; did you mean {suggestion}?" if suggestion else ""
        node.get_logger().warning(f"parameter {name} is not a parameter of {node.get_name()} and is IGNORED{hint}")
    return cfg, node_params


def updated_config(cfg: FlashOccConfig, updates: dict[str, Any]) -> FlashOccConfig:
    """A validated copy of `cfg` with `updates` (flattened parameter names) applied; ConfigError if invalid."""
    return from_dict(FlashOccConfig, unflatten({**flatten(to_dict(cfg)), **updates})).validate()


def _overrides(node: Any) -> dict:
    # rclpy keeps the --params-file / -p values of a node in Node._parameter_overrides and has no public accessor
    # for them (get_parameter() only sees declared parameters). Read here, in one place: without it, overrides
    # that match no declared parameter would be ignored without a word, and type errors could not show the value.
    return getattr(node, "_parameter_overrides", None) or {}


def _declare(node: Any, name: str, default: Any, desc: ParameterDescriptor) -> Any:
    try:
        value = node.declare_parameter(name, default, desc).value
    except InvalidParameterTypeException as exc:
        override = getattr(_overrides(node).get(name), "value", None)
        raise ConfigError(
            f"parameter {name}: expected {type(default).__name__}, got {override!r} ({exc.__class__.__name__}); "
            "write floats with a decimal point, e.g. 80.0"
        ) from exc
    except InvalidParameterValueException as exc:
        override = getattr(_overrides(node).get(name), "value", None)
        raise ConfigError(f"parameter {name}: value {override!r} rejected ({exc})") from exc
    if isinstance(default, list) and value is not None:
        value = list(value)
    return value


def descriptor(name: str, value: Any, description: str, value_range: Range | None, read_only: bool):
    d = ParameterDescriptor(name=name, description=description, read_only=read_only)
    if isinstance(value, bool):
        d.type = ParameterType.PARAMETER_BOOL
    elif isinstance(value, int):
        d.type = ParameterType.PARAMETER_INTEGER
        if value_range:
            d.integer_range = [IntegerRange(from_value=int(value_range.lo), to_value=int(value_range.hi), step=1)]
    elif isinstance(value, float):
        d.type = ParameterType.PARAMETER_DOUBLE
        if value_range:
            d.floating_point_range = [
                FloatingPointRange(from_value=float(value_range.lo), to_value=float(value_range.hi), step=0.0)
            ]
    elif isinstance(value, list):
        d.type = ParameterType.PARAMETER_STRING_ARRAY
    else:
        d.type = ParameterType.PARAMETER_STRING
    return d
