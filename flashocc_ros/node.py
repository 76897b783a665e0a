"""flashocc_node: six synchronized cameras -> semantic (and panoptic) occupancy, live or from a replayed bag.

    flashocc_node --ros-args --params-file config/flashocc-r50-M0.yaml [-p key:=value ...]
    python -m flashocc_ros.node --ros-args ...

Parameters are the flattened keys of `config.FlashOccConfig` (``model.variant``, ``cameras.transport``,
``sync.max_spread_ms``, ...) plus a few node-only ones (``qos.*``, ``diagnostics.*``); see docs/node.md.

Threads: the executor thread runs the subscription callbacks, which only queue messages into the approximate-time
synchronizer; complete sets go into a one-element latest-wins slot; a worker thread takes the freshest set,
builds the calibration (CameraInfo + TF, or a calibration file, plus the ego pose at each camera's stamp from
`tf.world_frame` <- ego, as the official pipeline does), runs OccupancyPipeline and publishes.
Every bad input gets one clear, rate-limited warning and the node carries on with the next good set.
"""

from __future__ import annotations

import difflib
import re
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from flashocc_ros import topics
from flashocc_ros.config import (
    OCC_GRID,
    ConfigError,
    FlashOccConfig,
    flatten,
    from_dict,
    to_dict,
    unflatten,
)
from flashocc_ros.health import HealthMonitor, HealthSnapshot
from flashocc_ros.msg import InferenceTiming, PanopticOccupancy, SemanticOccupancy
from flashocc_ros.ros_convert import (
    BadInput,
    camera_info_intrinsics,
    check_image_size,
    compressed_jpeg_bytes,
    image_to_rgb,
    jpeg_size,
    marker_array_msg,
    occupied_points,
    panoptic_to_msg,
    pointcloud2_msg,
    semantic_to_msg,
)
from flashocc_ros.sync import ApproximateTimeSync, CameraSet, LatestSlot, silent_streams
from flashocc_ros.tf_tree import (
    ExtrapolationError,
    TransformError,
    TransformTree,
    load_calibration_file,
    transform_to_matrix,
)

NODE_NAME = "flashocc_node"

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
}

# (min, max) for numeric parameters; config.validate() gives the precise (open/closed) error messages.
PARAMETER_RANGES = {
    "model.score_threshold": (0.0, 1.0),
    "sync.max_spread_ms": (0.0, 1000.0),
    "sync.queue_size": (1, 100),
    "sync.tf_timeout_s": (0.0, 3600.0),
    "outputs.max_markers": (0, OCC_GRID.num_voxels),
}

# Node-only parameters (not part of FlashOccConfig): name -> (default, description, range, read-only).
NODE_PARAMETERS: dict[str, tuple[Any, str, tuple | None, bool]] = {
    "qos.input_depth": (5, "history depth of the image / CameraInfo subscriptions (sensor-data QoS)", (1, 100), True),
    "qos.output_depth": (2, "history depth of the (reliable) output publishers", (1, 100), True),
    "diagnostics.warn_interval_s": (5.0, "the same warning is printed at most once per interval", (0.0, 3600.0), False),
    "diagnostics.camera_timeout_s": (
        2.0,
        "a camera silent this long while others publish is reported",
        (0.1, 600.0),
        False,
    ),
    "diagnostics.window_s": (
        10.0,
        "/diagnostics measures output rate, latency and dropped sets over this sliding window",
        (1.0, 600.0),
        False,
    ),
    "diagnostics.max_dropped_fraction": (
        0.5,
        "/diagnostics warns when more than this fraction of the camera sets in the window were dropped",
        (0.0, 1.0),
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
        (0.0, 1.0),
        False,
    ),
}

TF_CACHE_TIME_S = 10.0  # history of dynamic transforms kept by the built-in reader (tf2's default cache time)
POSE_TOLERANCE_LEVER_M = 50.0  # rotation differences count as the displacement they cause at this range


class CalibrationPending(RuntimeError):
    """Calibration for a set is not available (no CameraInfo yet, missing or stale TF)."""


class EgoPosePending(CalibrationPending):
    """A camera's stamp is newer than the newest world <- ego pose: the pose may still arrive."""


class EgoPoseUnavailable(RuntimeError):
    """No world <- ego pose for a camera's stamp and none will come (world frame unknown, or stamp too old)."""


# --------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------


def stamp_to_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class RateLimitedLog:
    """One log line per key per interval; counts how many were suppressed in between."""

    def __init__(self, logger: Any, interval_s: float):
        self._logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    # Each severity is logged from its own line: rclpy refuses a call site whose severity changes between calls
    # ("Logger severity cannot be changed between calls"), which killed the worker on its first error after a warning.
    def warn(self, key: str, text: str) -> None:
        line = self._due(key, text)
        if line is not None:
            self._logger.warning(line)

    def error(self, key: str, text: str) -> None:
        line = self._due(key, text)
        if line is not None:
            self._logger.error(line)

    def _due(self, key: str, text: str) -> str | None:
        """The line to log now, or None while `key` is rate-limited (counted as suppressed)."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            n = self._suppressed.pop(key, 0)
            self._last[key] = now
        return text + (f" ({n} more like this suppressed)" if n else "")


@dataclass
class CameraState:
    name: str
    image_topic: str
    info_topic: str
    intrinsics: np.ndarray | None = None  # valid K from the latest good CameraInfo
    info_size: tuple[int, int] | None = None  # (width, height) of that CameraInfo
    info_frame: str = ""
    info_error: str = ""  # why the latest CameraInfo was rejected ("" = ok)


@dataclass
class NodeCounters:
    frames_processed: int = 0
    images_rejected: int = 0
    sets_skipped_calibration: int = 0
    calibration_updates: int = 0  # the rig (K, camera -> ego, image size) changed
    ego_pose_updates: int = 0  # only the per-camera ego poses changed: voxel-pooling indices recomputed
    ego_pose_reuses: int = 0  # poses changed by less than tf.pose_tolerance_m: indices kept
    sets_uncompensated: int = 0  # processed with one shared ego pose (no world <- ego pose for them)
    errors: int = 0
    images_received: int = 0
    last_problem: str = ""  # the latest skipped / failed set, as logged (for /diagnostics)
    recent_latencies_ms: list[float] = field(default_factory=list)  # frames published since the last watchdog tick


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


def _descriptor(name: str, value: Any, description: str, value_range: tuple | None, read_only: bool):
    d = ParameterDescriptor(name=name, description=description, read_only=read_only)
    if isinstance(value, bool):
        d.type = ParameterType.PARAMETER_BOOL
    elif isinstance(value, int):
        d.type = ParameterType.PARAMETER_INTEGER
        if value_range:
            d.integer_range = [IntegerRange(from_value=int(value_range[0]), to_value=int(value_range[1]), step=1)]
    elif isinstance(value, float):
        d.type = ParameterType.PARAMETER_DOUBLE
        if value_range:
            d.floating_point_range = [
                FloatingPointRange(from_value=float(value_range[0]), to_value=float(value_range[1]), step=0.0)
            ]
    elif isinstance(value, list):
        d.type = ParameterType.PARAMETER_STRING_ARRAY
    else:
        d.type = ParameterType.PARAMETER_STRING
    return d


# --------------------------------------------------------------------------------------------------------------
# The node
# --------------------------------------------------------------------------------------------------------------


class FlashOccNode(Node):
    def __init__(self, pipeline_factory=None, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self.cfg = self._declare_parameters()  # raises ConfigError with the key and the value
        p = self._node_params
        self._log = RateLimitedLog(self.get_logger(), p["diagnostics.warn_interval_s"])
        self.counters = NodeCounters()
        self._lock = threading.Lock()
        self.cameras = [CameraState(c, img, info) for c, img, info in self.cfg.cameras.topics()]
        self._sync = ApproximateTimeSync(
            len(self.cameras), int(self.cfg.sync.max_spread_ms * 1e6), self.cfg.sync.queue_size, key_index=0
        )
        self._slot: LatestSlot[CameraSet] = LatestSlot()
        self._active_rig: str | None = None  # digest of K, camera -> ego and image size in the pipeline
        self._active_sensor2keyego: np.ndarray | None = None  # camera -> key ego of the pipeline's calibration
        self._fixed_calibration = None
        if self.cfg.cameras.calibration_file:
            self._fixed_calibration = load_calibration_file(self.cfg.cameras.calibration_file)

        # The model (fails here, with a clear error, for a checkpoint/engine of another variant).
        if pipeline_factory is None:
            from flashocc_ros.pipeline import OccupancyPipeline

            pipeline_factory = OccupancyPipeline
        t0 = time.monotonic()
        self.pipeline = pipeline_factory(self.cfg)
        self.backend_name = str(getattr(self.pipeline, "backend_name", self.cfg.model.backend))
        device = getattr(getattr(self.pipeline, "runner", None), "device", self.cfg.model.device)
        self._device = str(device)
        self._health_info = (
            ("variant", self.cfg.model.variant),
            ("backend", self.backend_name),
            ("device", self._device),
        )
        self.get_logger().info(
            f"{self.cfg.model.variant} ready on {device} (backend {self.backend_name}) in {time.monotonic() - t0:.1f} s"
        )

        if not self.cfg.model.checkpoint and not self.cfg.model.engine:
            self.get_logger().warning(
                "model.checkpoint is empty: running deterministic UNTRAINED weights; the occupancy is meaningless "
                "until an official checkpoint is given (see models/README.md)"
            )
        self._setup_tf()
        self._setup_io()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._health = HealthMonitor(  # starts from an all-zero snapshot: the node just started
            HealthSnapshot(time_s=time.monotonic()),
            window_s=p["diagnostics.window_s"],
            max_dropped_fraction=p["diagnostics.max_dropped_fraction"],
        )
        self._watchdog = self.create_timer(1.0, self._on_watchdog)
        self._worker = threading.Thread(target=self._work_loop, name="flashocc_worker", daemon=True)
        self._worker.start()

    # ---------------------------------------------------------------------------------------------------------
    # Parameters
    # ---------------------------------------------------------------------------------------------------------
    def _declare_parameters(self) -> FlashOccConfig:
        defaults = flatten(to_dict(FlashOccConfig()))
        values: dict[str, Any] = {}
        for name, default in defaults.items():
            desc = _descriptor(
                name,
                default,
                PARAMETER_HELP.get(name, ""),
                PARAMETER_RANGES.get(name),
                read_only=name not in DYNAMIC_PARAMETERS,
            )
            values[name] = self._declare(name, default, desc)
        self._node_params: dict[str, Any] = {}
        for name, (default, help_text, value_range, read_only) in NODE_PARAMETERS.items():
            desc = _descriptor(name, default, help_text, value_range, read_only)
            self._node_params[name] = self._declare(name, default, desc)
        cfg = from_dict(FlashOccConfig, unflatten(values))
        cfg = cfg.validate()
        # rclpy keeps the --params-file / -p values for this node in _parameter_overrides (no public accessor);
        # overrides that match no declared parameter would otherwise be ignored without a word.
        overrides = getattr(self, "_parameter_overrides", None) or {}
        for name, suggestion in undeclared_overrides(overrides, [*values, *self._node_params], self.has_parameter):
            hint = f"; did you mean {suggestion}?" if suggestion else ""
            self.get_logger().warning(f"parameter {name} is not a parameter of {NODE_NAME} and is IGNORED{hint}")
        return cfg

    def _declare(self, name: str, default: Any, desc: ParameterDescriptor) -> Any:
        try:
            value = self.declare_parameter(name, default, desc).value
        except InvalidParameterTypeException as exc:
            override = self.get_parameter_overrides_value(name)
            raise ConfigError(
                f"parameter {name}: expected {type(default).__name__}, got {override!r} ({exc.__class__.__name__}); "
                "write floats with a decimal point, e.g. 80.0"
            ) from exc
        except InvalidParameterValueException as exc:
            override = self.get_parameter_overrides_value(name)
            raise ConfigError(f"parameter {name}: value {override!r} rejected ({exc})") from exc
        if isinstance(default, list) and value is not None:
            value = list(value)
        return value

    def get_parameter_overrides_value(self, name: str) -> Any:
        p = getattr(self, "_parameter_overrides", {}).get(name)
        return None if p is None else p.value

    def _on_set_parameters(self, params) -> SetParametersResult:
        updates = {p.name: p.value for p in params if p.name in DYNAMIC_PARAMETERS}
        node_updates = {p.name: p.value for p in params if p.name in self._node_params}
        if not updates and not node_updates:
            return SetParametersResult(successful=True)
        try:
            data = to_dict(self.cfg)
            data = unflatten({**flatten(data), **updates})
            new_cfg = from_dict(FlashOccConfig, data).validate()
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.cfg = new_cfg
        with self._lock:
            self._sync.set_max_spread_ns(int(new_cfg.sync.max_spread_ms * 1e6))
        self._node_params.update(node_updates)
        self._log.interval_s = float(self._node_params["diagnostics.warn_interval_s"])
        self._health.window_s = float(self._node_params["diagnostics.window_s"])
        self._health.max_dropped_fraction = float(self._node_params["diagnostics.max_dropped_fraction"])
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------------------------------------------------
    # Subscriptions / publishers
    # ---------------------------------------------------------------------------------------------------------
    def _setup_io(self) -> None:
        depth_in = int(self._node_params["qos.input_depth"])
        depth_out = int(self._node_params["qos.output_depth"])
        sensor_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=depth_in,
            reliability=qos_profile_sensor_data.reliability,
            durability=qos_profile_sensor_data.durability,
        )
        msg_type = CompressedImage if self.cfg.cameras.transport == "compressed" else Image
        self._subs = []
        for i, cam in enumerate(self.cameras):
            self._subs.append(
                self.create_subscription(msg_type, cam.image_topic, partial(self._on_image, i), sensor_qos)
            )
            if self._fixed_calibration is None:
                self._subs.append(
                    self.create_subscription(CameraInfo, cam.info_topic, partial(self._on_camera_info, i), sensor_qos)
                )
        out_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=depth_out,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
        self.pub_semantic = self.create_publisher(SemanticOccupancy, topics.SEMANTIC_TOPIC, out_qos)
        self.pub_panoptic = None
        if self.cfg.variant.panoptic:
            self.pub_panoptic = self.create_publisher(PanopticOccupancy, topics.PANOPTIC_TOPIC, out_qos)
        self.pub_points = self.create_publisher(PointCloud2, topics.POINTS_TOPIC, out_qos)
        self.pub_markers = self.create_publisher(MarkerArray, topics.MARKERS_TOPIC, out_qos)
        self.pub_timing = self.create_publisher(InferenceTiming, topics.TIMING_TOPIC, out_qos)
        try:  # diagnostic_msgs ships with every ROS 2 install; pip-only setups may lack it
            from diagnostic_msgs.msg import DiagnosticArray
        except ImportError:
            self.pub_diagnostics = None
            self.get_logger().info("diagnostic_msgs is not installed: /diagnostics is not published")
        else:
            self.pub_diagnostics = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS_TOPIC, 10)
        self.get_logger().info(
            f"listening to {self.cfg.cameras.transport} images on {', '.join(c.image_topic for c in self.cameras)}"
        )

    def _setup_tf(self) -> None:
        self._tf_buffer = None
        self._tf_tree: TransformTree | None = None
        need_extrinsics = self._fixed_calibration is None
        world = self._node_params["tf.world_frame"]
        if not need_extrinsics and not world:
            return
        what = "camera extrinsics and ego poses" if need_extrinsics else "ego poses"
        if self._node_params["tf.use_tf2_ros"]:
            try:
                import tf2_ros

                self._tf_buffer = tf2_ros.Buffer()
                self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self, spin_thread=False)
                self.get_logger().info(f"{what} from tf2_ros")
                return
            except ImportError:
                pass
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError as exc:
            if not need_extrinsics:
                self.get_logger().warning(
                    f"tf.world_frame is '{world}' but neither tf2_ros nor tf2_msgs is installed: ego-motion "
                    "compensation is OFF (all six cameras share one ego pose)"
                )
                return
            raise ConfigError(
                "cameras.calibration_file is empty and neither tf2_ros nor tf2_msgs is installed: "
                "install ROS tf2 or give a calibration file"
            ) from exc
        self._tf_tree = TransformTree(TF_CACHE_TIME_S)
        static_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=100,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        dyn_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self._tf_subs = [
            self.create_subscription(TFMessage, "/tf_static", partial(self._on_tf, True), static_qos),
            self.create_subscription(TFMessage, "/tf", partial(self._on_tf, False), dyn_qos),
        ]
        self.get_logger().info(f"{what} from the built-in /tf_static + /tf reader (tf2_ros not installed)")

    def _on_tf(self, static: bool, msg) -> None:
        for t in msg.transforms:
            try:
                with self._lock:
                    self._tf_tree.add(t, static)
            except ValueError as exc:
                self._log.warn(
                    f"tf:{t.child_frame_id}", f"ignoring transform on {'/tf_static' if static else '/tf'}: {exc}"
                )

    def _on_camera_info(self, index: int, msg: CameraInfo) -> None:
        cam = self.cameras[index]
        try:
            K = camera_info_intrinsics(msg.k, int(msg.width), int(msg.height), cam.info_topic)
        except BadInput as exc:
            with self._lock:
                cam.intrinsics, cam.info_error = None, str(exc)
            self._log.warn(
                f"info:{_problem_key(str(exc))}",
                f"{exc}; frames of {cam.name} are skipped until a valid CameraInfo arrives",
            )
            return
        with self._lock:
            cam.intrinsics, cam.info_size, cam.info_frame, cam.info_error = (
                K,
                (int(msg.width), int(msg.height)),
                msg.header.frame_id,
                "",
            )

    def _on_image(self, index: int, msg) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            self.counters.images_received += 1
            result = self._sync.add(index, stamp, msg, time.monotonic())
        for o in result.outliers:
            cam = self.cameras[o.stream]
            self._log.warn(
                f"outlier:{o.stream}",
                f"camera {cam.name} ({cam.image_topic}): frame stamped {o.offset_ns * 1e-9:+.3f} s off the other "
                f"cameras (stamp {o.stamp_ns * 1e-9:.3f} s) dropped as a single outlier; its set is incomplete",
            )
        if result.reset:
            self._slot.clear()
            self._log.warn(
                "time_backwards",
                f"time went backwards on {self.cameras[index].image_topic} (stamp {stamp * 1e-9:.3f} s): "
                "bag loop or clock reset, synchronizer state cleared",
            )
        for s in result.sets:
            self._slot.put(s)

    def _on_watchdog(self) -> None:
        """Once a second: warn about silent cameras, summarise the node's health over the sliding window (the
        snapshot empties the latencies collected since the previous tick) and publish it on /diagnostics."""
        snapshot = self._health_snapshot(self._check_silent_cameras())
        report = self._health.update(snapshot)
        if self.pub_diagnostics is not None:
            self._publish_diagnostics(report)

    def _check_silent_cameras(self) -> list[str]:
        """Warn about cameras silent while others publish; returns their names."""
        timeout = float(self._node_params["diagnostics.camera_timeout_s"])
        now = time.monotonic()
        with self._lock:
            last = [self._sync.last_received(i) for i in range(len(self.cameras))]
            lag = [self._sync.stamp_lag_ns(i) for i in range(len(self.cameras))]
            incomplete = self._sync.counters.sets_incomplete
        silent = silent_streams(now, last, lag, timeout)
        for i in silent:
            cam = self.cameras[i]
            since = "nothing received yet" if last[i] is None else f"silent for {now - last[i]:.1f} s"
            self._log.warn(
                f"silent:{i}",
                f"camera {cam.name} ({cam.image_topic}): {since} ({lag[i] * 1e-9:.1f} s behind in message time) "
                f"while other cameras publish; {incomplete} incomplete sets so far",
            )
        return [self.cameras[i].name for i in silent]

    def _health_snapshot(self, silent: list[str]) -> HealthSnapshot:
        c = self.counters
        with self._lock:
            latencies, c.recent_latencies_ms = c.recent_latencies_ms, []
            return HealthSnapshot(
                time_s=time.monotonic(),
                images_received=c.images_received,
                frames_processed=c.frames_processed,
                images_rejected=c.images_rejected,
                sets_skipped_calibration=c.sets_skipped_calibration,
                sets_complete=self._sync.counters.sets_complete,
                sets_replaced=self._slot.replaced,
                sets_incomplete=self._sync.counters.sets_incomplete,
                errors=c.errors,
                last_problem=c.last_problem,
                recent_latencies_ms=tuple(latencies),
                silent_cameras=tuple(silent),
                camera_info_errors=tuple(cam.info_error for cam in self.cameras if cam.info_error),
                info=self._health_info,
            )

    def _publish_diagnostics(self, report) -> None:
        """The health report as one diagnostic_msgs/DiagnosticStatus (rules: flashocc_ros/health.py)."""
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        status = DiagnosticStatus(
            level=bytes([report.level]),
            name=f"{self.get_name()}: occupancy",
            message=report.message,
            hardware_id=self._device,
            values=[KeyValue(key=k, value=v) for k, v in report.values],
        )
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diagnostics.publish(msg)

    # ---------------------------------------------------------------------------------------------------------
    # Worker
    # ---------------------------------------------------------------------------------------------------------
    def _work_loop(self) -> None:
        while not self._slot.closed:
            s = self._slot.get(timeout=0.5)
            if s is None or self._slot.closed:  # stopping: do not start another frame
                continue
            try:
                self._process_when_calibrated(s)
            except BadInput as exc:
                self.counters.last_problem = str(exc)
                self.counters.images_rejected += 1
                self._log.warn(f"bad:{_problem_key(str(exc))}", f"{exc}; set at {s.stamp_ns * 1e-9:.3f} s skipped")
            except CalibrationPending as exc:
                self.counters.last_problem = str(exc)
                self.counters.sets_skipped_calibration += 1
                self._log.warn(f"calib:{_problem_key(str(exc))}", f"{exc}; set at {s.stamp_ns * 1e-9:.3f} s skipped")
            except Exception as exc:  # keep serving: one clear error line per kind, with the traceback at debug
                self.counters.last_problem = f"{type(exc).__name__}: {exc}"
                self.counters.errors += 1
                self._log.error(f"error:{type(exc).__name__}", f"processing failed: {type(exc).__name__}: {exc}")
                self.get_logger().debug(traceback.format_exc())

    def _process_when_calibrated(self, s: CameraSet) -> None:
        """Process `s`; when its CameraInfo/TF has not arrived yet (a bag publishes a frame's CameraInfo right
        after its image), wait up to sync.tf_timeout_s for it, unless a newer set replaces this one."""
        timeout = float(self.cfg.sync.tf_timeout_s)
        deadline = time.monotonic() + timeout
        compensate = True
        while True:
            try:
                return self._process(s, compensate)
            except EgoPosePending as exc:
                if self._slot.has_item() or self._slot.closed:
                    raise
                if time.monotonic() >= deadline:
                    self._log.warn(
                        "ego_pose_late",
                        f"{exc} after waiting {timeout:.2f} s (sync.tf_timeout_s): set at {s.stamp_ns * 1e-9:.3f} s "
                        "processed WITHOUT ego-motion compensation (one shared ego pose)",
                    )
                    compensate = False
                    continue
                time.sleep(0.02)
            except CalibrationPending:
                if time.monotonic() >= deadline or self._slot.has_item() or self._slot.closed:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        """Let the worker finish (and publish) the frame in progress and end; call before the context shuts down."""
        self._slot.close()
        self._worker.join(timeout=30)
        if self._worker.is_alive():
            self.get_logger().warning("the worker did not finish its frame within 30 s; shutting down anyway")

    def _calibration_for(self, s: CameraSet, sizes: list[tuple[int, int]], compensate: bool = True):
        from flashocc_ros.geometry import RigCalibration

        Ks, s2e = [], []
        ego = self.cfg.outputs.ego_frame
        for cam, frame, (width, height) in zip(self.cameras, s.frames, sizes):
            if self._fixed_calibration is not None:
                cal = self._fixed_calibration[cam.name]
                check_image_size(cam.image_topic, width, height, (cal.image_hw[1], cal.image_hw[0]))
                Ks.append(cal.intrinsics)
                s2e.append(cal.sensor2ego)
                continue
            with self._lock:
                K, info_size, info_frame, info_error = cam.intrinsics, cam.info_size, cam.info_frame, cam.info_error
            if K is None:
                raise CalibrationPending(info_error or f"no CameraInfo received yet on {cam.info_topic}")
            check_image_size(cam.image_topic, width, height, info_size)
            Ks.append(K)
            frame_id = frame.payload.header.frame_id or info_frame
            if not frame_id:
                raise BadInput(f"{cam.image_topic}: header.frame_id is empty and so is its CameraInfo's")
            s2e.append(self._lookup_extrinsics(ego, frame_id, frame.stamp_ns))
        if len(set(sizes)) != 1:
            detail = ", ".join(f"{c.name} {w}x{h}" for c, (w, h) in zip(self.cameras, sizes))
            raise BadInput(f"the six images must have one size, got {detail}")
        width, height = sizes[0]
        ego2global = self._ego_poses(s) if compensate else None
        if ego2global is None:
            self.counters.sets_uncompensated += 1
        return RigCalibration(np.stack(Ks), np.stack(s2e), ego2global, (height, width))

    def _ego_poses(self, s: CameraSet) -> np.ndarray | None:
        """(6,4,4) world <- ego at each camera's stamp (the official per-camera ego2global), or None (with a
        rate-limited warning) when no such pose exists; EgoPosePending when one may still arrive."""
        world = self._node_params["tf.world_frame"]
        if not world or (self._tf_buffer is None and self._tf_tree is None):
            return None
        ego = self.cfg.outputs.ego_frame
        poses = []
        try:
            for frame in s.frames:
                poses.append(self._lookup_ego_pose(world, ego, frame.stamp_ns))
        except EgoPoseUnavailable as exc:
            self._log.warn(f"ego_pose:{_problem_key(str(exc))}", str(exc))
            return None
        return np.stack(poses)

    def _lookup_ego_pose(self, world: str, ego: str, stamp_ns: int) -> np.ndarray:
        off = "ego-motion compensation is OFF (all six cameras share one ego pose)"
        if self._tf_buffer is not None:
            import tf2_ros
            from rclpy.time import Time

            try:
                t = self._tf_buffer.lookup_transform(world, ego, Time(nanoseconds=stamp_ns))
            except tf2_ros.ExtrapolationException as exc:
                if "past" in str(exc):
                    raise EgoPoseUnavailable(
                        f"no {world} <- {ego} pose at {stamp_ns * 1e-9:.6f} s ({exc}); {off}"
                    ) from exc
                raise EgoPosePending(f"no {world} <- {ego} pose yet at {stamp_ns * 1e-9:.6f} s ({exc})") from exc
            except (tf2_ros.LookupException, tf2_ros.ConnectivityException) as exc:
                raise EgoPoseUnavailable(
                    f"tf.world_frame '{world}': no {world} <- {ego} transform in TF ({exc}); {off} "
                    "(set tf.world_frame to the frame of your ego poses, or '' to silence this)"
                ) from exc
            return transform_to_matrix(t.transform)
        with self._lock:
            try:
                if not self._tf_tree.has_frame(world):
                    raise TransformError(f"frame {world!r} was never received on /tf or /tf_static")
                return self._tf_tree.lookup(world, ego, stamp_ns).matrix
            except ExtrapolationError as exc:
                if exc.future:
                    raise EgoPosePending(f"no {world} <- {ego} pose yet: {exc}") from exc
                raise EgoPoseUnavailable(f"no {world} <- {ego} pose: {exc}; {off}") from exc
            except TransformError as exc:
                raise EgoPoseUnavailable(
                    f"tf.world_frame '{world}': no {world} <- {ego} transform ({exc}); {off} "
                    "(set tf.world_frame to the frame of your ego poses, or '' to silence this)"
                ) from exc

    def _lookup_extrinsics(self, ego: str, camera_frame: str, stamp_ns: int) -> np.ndarray:
        timeout_ns = int(self.cfg.sync.tf_timeout_s * 1e9)
        if self._tf_buffer is not None:
            import tf2_ros
            from rclpy.time import Time

            try:
                t = self._tf_buffer.lookup_transform(ego, camera_frame, Time())
            except (tf2_ros.LookupException, tf2_ros.ConnectivityException, tf2_ros.ExtrapolationException) as exc:
                raise CalibrationPending(f"no transform {ego} <- {camera_frame}: {exc}") from exc
            t_ns = stamp_to_ns(t.header.stamp)
            if t_ns and stamp_ns - t_ns > timeout_ns:
                raise CalibrationPending(
                    f"stale transform {ego} <- {camera_frame}: {(stamp_ns - t_ns) * 1e-9:.2f} s older than the image"
                )
            return transform_to_matrix(t.transform)
        with self._lock:
            try:
                found = self._tf_tree.lookup(ego, camera_frame)
            except TransformError as exc:
                raise CalibrationPending(f"no transform {ego} <- {camera_frame}: {exc}") from exc
        if found.oldest_dynamic_ns is not None and stamp_ns - found.oldest_dynamic_ns > timeout_ns:
            age = (stamp_ns - found.oldest_dynamic_ns) * 1e-9
            raise CalibrationPending(f"stale transform {ego} <- {camera_frame}: {age:.2f} s older than the image")
        return found.matrix

    def _process(self, s: CameraSet, compensate: bool = True) -> None:
        t_start = time.perf_counter()
        compressed = self.cfg.cameras.transport == "compressed"
        inputs, sizes = [], []
        for cam, frame in zip(self.cameras, s.frames):
            msg = frame.payload
            if compressed:
                data = compressed_jpeg_bytes(msg, cam.image_topic)
                sizes.append(jpeg_size(data, cam.image_topic))
                inputs.append(data)
            else:
                inputs.append(image_to_rgb(msg, cam.image_topic))
                sizes.append((int(msg.width), int(msg.height)))
        calib = self._calibration_for(s, sizes, compensate)
        self._apply_calibration(calib)
        if compressed:
            try:
                result = self.pipeline.run_jpeg(inputs)
            except Exception as exc:
                corrupt = self._find_corrupt_jpeg(inputs)
                if corrupt is None:
                    raise
                raise corrupt from exc
        else:
            result = self.pipeline.run(inputs)
        self._publish(s, result, t_start)

    def _apply_calibration(self, calib) -> None:
        """Hand `calib` to the pipeline (which recomputes the voxel-pooling indices when it changed). Rig changes
        are logged; per-frame ego-pose changes are counted, and skipped while below tf.pose_tolerance_m."""
        from flashocc_ros.geometry import sensor_to_key_ego

        rig = _rig_digest(calib)
        s2ke = sensor_to_key_ego(calib.sensor2ego, calib.ego2global)
        tolerance = float(self._node_params["tf.pose_tolerance_m"])
        if tolerance > 0 and rig == self._active_rig and self._active_sensor2keyego is not None:
            delta = np.abs(s2ke.astype(np.float64) - self._active_sensor2keyego)
            moved = delta[:, :3, 3].max() + POSE_TOLERANCE_LEVER_M * delta[:, :3, :3].max()
            if moved < tolerance:
                self.counters.ego_pose_reuses += 1
                return
        if not self.pipeline.set_calibration(calib):
            return
        if rig != self._active_rig:
            self.counters.calibration_updates += 1
            height, width = calib.image_hw
            self.get_logger().info(f"calibration changed (image {width}x{height}): voxel-pooling indices recomputed")
        else:
            self.counters.ego_pose_updates += 1
        self._active_rig = rig
        self._active_sensor2keyego = s2ke.astype(np.float64)

    def _find_corrupt_jpeg(self, jpegs: list[bytes]) -> BadInput | None:
        import simplejpeg

        for cam, data in zip(self.cameras, jpegs):
            try:
                simplejpeg.decode_jpeg(data, colorspace="RGB")
            except (ValueError, RuntimeError) as exc:
                return BadInput(f"{cam.image_topic}: corrupt JPEG ({exc})")
        return None

    def _publish(self, s: CameraSet, result, t_start: float) -> None:
        t_pub = time.perf_counter()
        cfg = self.cfg.outputs
        header = Header(frame_id=cfg.ego_frame)
        header.stamp = s.frames[s.key_index].payload.header.stamp
        source = self.cfg.model.variant
        if cfg.publish_semantic:
            self.pub_semantic.publish(semantic_to_msg(result.semantic, header, source))
        panoptic = getattr(result, "panoptic", None)
        if self.pub_panoptic is not None and cfg.publish_panoptic and panoptic is not None:
            self.pub_panoptic.publish(
                panoptic_to_msg(result.semantic, panoptic, result.instances, header, source, self.cfg.model.pano_mode)
            )
        if cfg.publish_pointcloud:
            self.pub_points.publish(pointcloud2_msg(occupied_points(result.semantic, panoptic), header))
        if cfg.publish_markers:
            self.pub_markers.publish(marker_array_msg(result.semantic, header, cfg.max_markers))
        t_end = time.perf_counter()
        self.counters.frames_processed += 1
        latency_ms = (time.monotonic() - s.completed_at) * 1e3
        with self._lock:
            self.counters.recent_latencies_ms.append(latency_ms)
        if cfg.publish_timing:
            timings = dict(getattr(result, "timings_ms", {}) or {})
            with self._lock:
                incomplete = self._sync.counters.sets_incomplete
            msg = InferenceTiming(header=header, backend=self.backend_name)
            msg.decode_ms = float(timings.get("decode", 0.0))
            msg.preprocess_ms = float(timings.get("preprocess", 0.0))
            msg.inference_ms = float(timings.get("inference", 0.0))
            msg.postprocess_ms = float(timings.get("postprocess", 0.0))
            msg.publish_ms = (t_end - t_pub) * 1e3
            msg.total_ms = (t_end - t_start) * 1e3
            msg.latency_ms = latency_ms
            msg.sync_spread_ms = s.spread_ns * 1e-6
            msg.frames_processed = self.counters.frames_processed
            msg.sets_replaced = self._slot.replaced
            msg.sets_incomplete = incomplete
            msg.images_rejected = self.counters.images_rejected
            self.pub_timing.publish(msg)


def _rig_digest(calib) -> str:
    """Digest of what defines the rig (K, camera -> ego, image size), without the per-frame ego poses."""
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(calib.intrinsics, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(calib.sensor2ego, dtype=np.float64).tobytes())
    h.update(repr(calib.image_hw).encode())
    return h.hexdigest()


def _problem_key(text: str) -> str:
    """Warnings that differ only in numbers (stamps, ages, sizes) share one rate limit."""
    return re.sub(r"[0-9]+(\.[0-9]*)?", "#", text)


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------


def main(args: list[str] | None = None) -> int:
    # rclpy's own SIGINT/SIGTERM handlers shut the context down at once, while the worker may still be publishing
    # the frame in progress ("Failed to publish: publisher's context is invalid"). Ours only ask the spin loop to
    # end; the worker is then stopped and joined before the context shuts down.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop_requested = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop_requested.set())
    node = None
    try:
        try:
            node = FlashOccNode()
        except ConfigError as exc:
            print(f"{NODE_NAME}: configuration error: {exc}", file=sys.stderr, flush=True)
            return 2
        except Exception as exc:
            print(f"{NODE_NAME}: failed to start: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            while not stop_requested.is_set():
                executor.spin_once(timeout_sec=0.1)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            executor.remove_node(node)
            executor.shutdown()
        return 0
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
