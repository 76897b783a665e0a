"""Single source of truth for constants and typed configuration.

Everything that describes the occupancy grid, the classes, the camera rig and the model variants lives here.
No ROS import: the offline tools and the node share these definitions.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flashocc_ros import topics

# --------------------------------------------------------------------------------------------------------------
# Occ3D-nuScenes grid
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridSpec:
    """A regular voxel grid in the ego frame (x forward, y left, z up), indexed [ix, iy, iz]."""

    lower: tuple[float, float, float] = (-40.0, -40.0, -1.0)
    upper: tuple[float, float, float] = (40.0, 40.0, 5.4)
    voxel_size: float = 0.4
    shape: tuple[int, int, int] = (200, 200, 16)

    @property
    def num_voxels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def voxel_center(self, ix, iy, iz):
        """Centre of voxel (ix, iy, iz) in metres (works elementwise on arrays)."""
        v = self.voxel_size
        return (
            self.lower[0] + v * (ix + 0.5),
            self.lower[1] + v * (iy + 0.5),
            self.lower[2] + v * (iz + 0.5),
        )


OCC_GRID = GridSpec()

CLASS_NAMES: tuple[str, ...] = (
    "others",
    "barrier",
    "bicycle",
    "bus",
    "car",
    "construction_vehicle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "trailer",
    "truck",
    "driveable_surface",
    "other_flat",
    "sidewalk",
    "terrain",
    "manmade",
    "vegetation",
    "free",
)
NUM_CLASSES = len(CLASS_NAMES)  # 18
FREE_INDEX = CLASS_NAMES.index("free")  # 17
# First panoptic instance id; values below it in a panoptic grid are class indices.
FIRST_INSTANCE_ID = NUM_CLASSES  # 18

# Occupancy classes that carry instances in the panoptic head (all ten detection classes).
THING_CLASS_INDICES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
# RayPQ "thing" classes (SparseOcc): barrier and traffic_cone are evaluated as stuff there.
RAYPQ_THING_CLASS_INDICES: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 9, 10)

# Centerness-head class order (config `class_names` of Panoptic-FlashOcc), and its mapping to occupancy classes.
HEAD_CLASS_NAMES: tuple[str, ...] = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
HEAD_TO_OCC: tuple[int, ...] = tuple(CLASS_NAMES.index(n) for n in HEAD_CLASS_NAMES)

# nuScenes camera rig in the order the network expects. Index 0 (CAM_FRONT_LEFT) defines the key ego frame.
CAMERA_NAMES: tuple[str, ...] = (
    "CAM_FRONT_LEFT",
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_LEFT",
    "CAM_BACK",
    "CAM_BACK_RIGHT",
)
KEY_CAMERA = CAMERA_NAMES[0]

# Occ3D colour map (RGB), one row per class; free is white but is normally hidden.
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),  # others
    (255, 120, 50),  # barrier
    (255, 192, 203),  # bicycle
    (255, 255, 0),  # bus
    (0, 150, 245),  # car
    (0, 255, 255),  # construction_vehicle
    (200, 180, 0),  # motorcycle
    (255, 0, 0),  # pedestrian
    (255, 240, 150),  # traffic_cone
    (135, 60, 0),  # trailer
    (160, 32, 240),  # truck
    (255, 0, 255),  # driveable_surface
    (139, 137, 137),  # other_flat
    (75, 0, 75),  # sidewalk
    (150, 240, 80),  # terrain
    (230, 230, 250),  # manmade
    (0, 175, 0),  # vegetation
    (255, 255, 255),  # free
)


# --------------------------------------------------------------------------------------------------------------
# Image pre-processing (test-time PrepareImageInputs of the official configs)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageAugSpec:
    source_hw: tuple[int, int] = (900, 1600)  # nuScenes camera images
    input_hw: tuple[int, int] = (256, 704)  # network input
    # ImageNet mean/std in RGB order, applied to B,G,R channels by the official pipeline (see preprocess.py).
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)


IMAGE_AUG = ImageAugSpec()


# --------------------------------------------------------------------------------------------------------------
# Model variants (official config names)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelVariant:
    name: str  # official config name
    short: str  # M0, M1, PT, PF
    depth_step: float  # depth bins arange(1, 45, step)
    context_channels: int  # C_trans
    bev_channels: int  # BEV neck output = occ head channels
    depth_net: str  # "lss" (1x1 conv) or "bevdepth" (camera-aware DepthNet)
    panoptic: bool
    # Temporal variants (SPEC4D): frames in the input (current + previous keyframes, + the stereo reference frame),
    # frames whose BEV is fused, image-neck width, stereo depth, spacing of the history frames.
    num_frames: int = 1
    bev_frames: int = 1
    neck_channels: int = 256
    stereo: bool = False
    frame_interval_s: float = 0.5  # nuScenes keyframes
    sid: bool = False  # spacing-increasing depth bins (4D-stereo)

    @property
    def temporal(self) -> bool:
        return self.num_frames > 1

    @property
    def depth_bins(self) -> int:
        return int(round((45.0 - 1.0) / self.depth_step))

    @property
    def depth_range(self) -> tuple[float, float, float]:
        return (1.0, 45.0, self.depth_step)


VARIANTS: dict[str, ModelVariant] = {
    v.name: v
    for v in (
        ModelVariant("flashocc-r50-M0", "M0", 1.0, 64, 128, "lss", False),
        ModelVariant("flashocc-r50", "M1", 0.5, 64, 256, "lss", False),
        ModelVariant("panoptic-flashocc-r50-depth-tiny-pano", "PT", 1.0, 64, 128, "bevdepth", True),
        ModelVariant("panoptic-flashocc-r50-depth-pano", "PF", 0.5, 80, 256, "bevdepth", True),
        # temporal (BEVStereo4D): current + previous keyframe fused, + the keyframe before as stereo reference
        ModelVariant("flashocc-r50-4d-stereo", "M2", 0.5, 80, 256, "bevdepth", False, 3, 2, stereo=True, sid=True),
        # temporal (BEVDepth4D): current + 1 / + 8 previous keyframes, 512-channel image neck
        ModelVariant(
            "panoptic-flashocc-r50-depth4d-pano", "P2", 0.5, 80, 256, "bevdepth", True, 2, 2, neck_channels=512
        ),
        ModelVariant(
            "panoptic-flashocc-r50-depth4d-longterm8f-pano",
            "P9",
            0.5,
            80,
            256,
            "bevdepth",
            True,
            9,
            9,
            neck_channels=512,
        ),
    )
}
DEFAULT_VARIANT = "flashocc-r50-M0"


def get_variant(name: str) -> ModelVariant:
    """Variant by official config name (or short name M0/M1/PT/PF)."""
    if name in VARIANTS:
        return VARIANTS[name]
    for v in VARIANTS.values():
        if v.short.lower() == name.lower():
            return v
    raise ValueError(f"unknown model variant {name!r}; known: {', '.join(VARIANTS)}")


# --------------------------------------------------------------------------------------------------------------
# Typed configuration loaded from YAML
# --------------------------------------------------------------------------------------------------------------

BACKENDS = ("auto", "tensorrt", "onnxruntime", "pytorch")
PRECISIONS = ("fp32", "fp16", "int8")
PANO_MODES = ("corrected", "official")
TRANSPORTS = ("compressed", "raw")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key and the value."""


@dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric setting; `lo_open` / `hi_open` exclude the bound."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def __str__(self) -> str:
        return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


# The numeric ranges, declared once: validate() below checks them, the node declares them as parameter ranges.
PARAMETER_RANGES: dict[str, Range] = {
    "model.score_threshold": Range(0.0, 1.0, hi_open=True),
    "model.preprocess_threads": Range(0, 64),
    "sync.max_spread_ms": Range(0.0, 1000.0, lo_open=True),
    "sync.queue_size": Range(1, 100),
    "sync.tf_timeout_s": Range(0.0, 3600.0, lo_open=True),
    "outputs.max_markers": Range(0, OCC_GRID.num_voxels),
    # temporal variants: a history slot takes the stored frame within this of its keyframe time (< half the 0.5 s
    # keyframe interval, so that no frame can serve two slots)
    "temporal.history_tolerance_s": Range(0.0, 0.25, lo_open=True, hi_open=True),
    "temporal.history_max_frames": Range(1, 1000),
}


def _check_range(section: str, key: str, value: float, prefix: str) -> None:
    r = PARAMETER_RANGES[f"{section}.{key}"]
    if value not in r:
        raise ConfigError(f"{prefix}.{key}: {value!r} is outside {r}")


@dataclass
class ModelConfig:
    variant: str = DEFAULT_VARIANT
    checkpoint: str = ""  # .pth (any format the loader accepts); empty = deterministic untrained weights
    engine: str = ""  # TensorRT engine or ONNX file, used by the matching backend
    backend: str = "auto"
    device: str = "auto"  # auto (cuda when a CUDA GPU is visible, else cpu) | cpu | cuda | cuda:N
    precision: str = "fp32"
    engine_cache_dir: str = "~/.cache/flashocc_ros/engines"
    pano_mode: str = "corrected"
    score_threshold: float = 0.3
    preprocess_threads: int = 0  # threads decoding + preprocessing the six images; 0 = min(6, usable CPU cores)

    def validate(self, prefix: str = "model") -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"{prefix}.variant: unknown variant {self.variant!r}; known: {', '.join(VARIANTS)}")
        _choice(prefix, "backend", self.backend, BACKENDS)
        _choice(prefix, "precision", self.precision, PRECISIONS)
        _choice(prefix, "pano_mode", self.pano_mode, PANO_MODES)
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            raise ConfigError(f"{prefix}.device: {self.device!r} is not auto, cpu, cuda or cuda:N")
        _check_range("model", "score_threshold", self.score_threshold, prefix)
        _check_range("model", "preprocess_threads", self.preprocess_threads, prefix)


@dataclass
class CameraConfig:
    names: list[str] = field(default_factory=lambda: list(CAMERA_NAMES))
    transport: str = "compressed"
    # Topic patterns; "{camera}" is replaced by the camera name.
    image_topic: str = topics.COMPRESSED_IMAGE_TOPIC  # image_transport naming; raw transport: topics.RAW_IMAGE_TOPIC
    info_topic: str = topics.CAMERA_INFO_TOPIC
    # Optional calibration YAML for a fixed rig (intrinsics + camera->ego); empty = CameraInfo + TF.
    calibration_file: str = ""

    def validate(self, prefix: str = "cameras") -> None:
        if list(self.names) != list(CAMERA_NAMES):
            raise ConfigError(
                f"{prefix}.names: {self.names!r} must be the nuScenes rig in network order {list(CAMERA_NAMES)}"
            )
        _choice(prefix, "transport", self.transport, TRANSPORTS)
        for key in ("image_topic", "info_topic"):
            if "{camera}" not in getattr(self, key):
                raise ConfigError(f"{prefix}.{key}: {getattr(self, key)!r} must contain '{{camera}}'")

    def topics(self) -> list[tuple[str, str, str]]:
        """(camera, image topic, camera_info topic) in network order."""
        return [(c, self.image_topic.format(camera=c), self.info_topic.format(camera=c)) for c in self.names]


@dataclass
class SyncConfig:
    max_spread_ms: float = 80.0  # nuScenes cameras of one sweep span up to ~50 ms
    queue_size: int = 4
    tf_timeout_s: float = 1.0

    def validate(self, prefix: str = "sync") -> None:
        for key in ("max_spread_ms", "queue_size", "tf_timeout_s"):
            _check_range("sync", key, getattr(self, key), prefix)


@dataclass
class OutputConfig:
    ego_frame: str = "base_link"
    publish_semantic: bool = True
    publish_panoptic: bool = True
    publish_pointcloud: bool = True
    publish_markers: bool = False
    max_markers: int = 20000
    publish_timing: bool = True

    def validate(self, prefix: str = "outputs") -> None:
        if not self.ego_frame:
            raise ConfigError(f"{prefix}.ego_frame: must not be empty")
        _check_range("outputs", "max_markers", self.max_markers, prefix)


@dataclass
class TemporalConfig:
    """History of the temporal variants (``temporal.TemporalPipeline``; single-frame variants ignore it)."""

    history_tolerance_s: float = 0.1  # slot k = the stored frame nearest t - k * 0.5 s, if within this
    history_max_frames: int = 64  # frames kept at most (12 Hz x the longest history, 4.1 s: ~50)

    def validate(self, prefix: str = "temporal") -> None:
        for key in ("history_tolerance_s", "history_max_frames"):
            _check_range("temporal", key, getattr(self, key), prefix)


@dataclass
class FlashOccConfig:
    """Everything the node and the offline pipeline need; `config/<variant>.yaml` holds one of these."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cameras: CameraConfig = field(default_factory=CameraConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    outputs: OutputConfig = field(default_factory=OutputConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)

    def validate(self) -> FlashOccConfig:
        self.model.validate()
        self.cameras.validate()
        self.sync.validate()
        self.outputs.validate()
        self.temporal.validate()
        slots = self.variant.num_frames - 1
        if self.variant.temporal and self.temporal.history_max_frames < slots:
            raise ConfigError(
                f"temporal.history_max_frames: {self.temporal.history_max_frames} is below the {slots} history "
                f"slots of {self.variant.name}"
            )
        return self

    @property
    def variant(self) -> ModelVariant:
        return VARIANTS[self.model.variant]


def _choice(prefix: str, key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{prefix}.{key}: {value!r} is not one of {', '.join(allowed)}")


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming the key and the value."""
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, path)
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item_type, *_rest) = typing.get_args(annotation) or (Any,)
        return [_coerce(f"{path}[{i}]", v, item_type) for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict, path: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown key {where}{unknown[0]} (value {data[unknown[0]]!r}); allowed: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(f"{path}.{name}" if path else name, value, hints[name])
    return cls(**kwargs)


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> FlashOccConfig:
    """Load and validate a FlashOccConfig from YAML (missing sections keep their defaults).

    A ROS 2 parameters file (``node_name: {ros__parameters: {...}}``) is accepted too.
    """
    data: dict = {}
    if path is not None:
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = unwrap_ros_parameters(data)
    if overrides:
        data = merge_dicts(data, overrides)
    return from_dict(FlashOccConfig, data).validate()


def unwrap_ros_parameters(data: dict) -> dict:
    """`{node: {ros__parameters: X}}` or `{/**: {ros__parameters: X}}` -> X; other dicts unchanged."""
    if len(data) == 1:
        (inner,) = data.values()
        if isinstance(inner, dict) and set(inner) == {"ros__parameters"}:
            return inner["ros__parameters"] or {}
    return data


def merge_dicts(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = v
    return out


def save_config(cfg: FlashOccConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'model.variant': ..., ...} (the node's parameter names)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out
