"""flashocc_node: six synchronized cameras -> semantic (and panoptic) occupancy, live or from a replayed bag.

    flashocc_node --ros-args --params-file config/flashocc-r50-M0.yaml [-p key:=value ...]
    python -m flashocc_ros.node --ros-args ...

Parameters are the flattened keys of `config.FlashOccConfig` (``model.variant``, ``cameras.transport``,
``sync.max_spread_ms``, ...) plus a few node-only ones (``qos.*``, ``diagnostics.*``); see docs/node.md.

Threads: the executor thread runs the subscription callbacks, which only queue messages into the approximate-time
synchronizer; complete sets go into a one-element latest-wins slot; a worker thread takes the freshest set,
builds the calibration (CameraInfo + TF, or a calibration file, plus the ego pose at each camera's stamp from
`tf.world_frame` <- ego, as the official pipeline does), runs OccupancyPipeline (temporal variants: TemporalPipeline
with the set's stamp; its history is chosen by time, see temporal.py) and publishes.
Every bad input gets one clear, rate-limited warning and the node carries on with the next good set.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from functools import partial

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from flashocc_ros import topics
from flashocc_ros.config import ConfigError
from flashocc_ros.msg import InferenceTiming, PanopticOccupancy, SemanticOccupancy
from flashocc_ros.ros import messages as convert
from flashocc_ros.ros.health import HealthMonitor, HealthSnapshot, NodeCounters
from flashocc_ros.ros.messages import BadInput
from flashocc_ros.ros.parameters import (
    DYNAMIC_PARAMETERS,
    declare_parameters,
    updated_config,
)
from flashocc_ros.ros.qos import output_qos, sensor_qos
from flashocc_ros.ros.ratelimit import RateLimitedLog, problem_key
from flashocc_ros.ros.rig import (
    CalibrationPending,
    CalibrationTracker,
    CameraTopics,
    ImageHeader,
    RigAssembler,
    retry_while_pending,
)
from flashocc_ros.ros.sync import ApproximateTimeSync, CameraSet, LatestSlot, silent_camera_warnings
from flashocc_ros.ros.tf_source import transform_source
from flashocc_ros.ros.tf_tree import load_calibration_file
from flashocc_ros.stamps import stamp_to_ns

NODE_NAME = "flashocc_node"


# --------------------------------------------------------------------------------------------------------------
# The node
# --------------------------------------------------------------------------------------------------------------


class FlashOccNode(Node):
    def __init__(self, pipeline_factory=None, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self.cfg, self._node_params = declare_parameters(self)  # raises ConfigError with the key and the value
        p = self._node_params
        self._log = RateLimitedLog(self.get_logger(), p["diagnostics.warn_interval_s"])
        self.counters = NodeCounters()
        self._lock = threading.Lock()
        self.cameras = [CameraTopics(*c) for c in self.cfg.cameras.topics()]
        self._sync = ApproximateTimeSync(
            len(self.cameras), int(self.cfg.sync.max_spread_ms * 1e6), self.cfg.sync.queue_size, key_index=0
        )
        self._slot: LatestSlot[CameraSet] = LatestSlot()
        self._calibration = CalibrationTracker()  # what the pipeline holds
        fixed = None
        if self.cfg.cameras.calibration_file:
            fixed = load_calibration_file(self.cfg.cameras.calibration_file)

        # The model (fails here, with a clear error, for a checkpoint/engine of another variant).
        if pipeline_factory is None:
            from flashocc_ros.inference.temporal import create_pipeline

            pipeline_factory = partial(create_pipeline, warn=partial(self._log.warn, "temporal_history"))
        t0 = time.monotonic()
        self.pipeline = pipeline_factory(self.cfg)
        self.temporal = self.cfg.variant.temporal  # TemporalPipeline: run(images, calib, stamp), status()
        self.backend_name = str(getattr(self.pipeline, "backend_name", self.cfg.model.backend))
        device = getattr(getattr(self.pipeline, "runner", self.pipeline), "device", self.cfg.model.device)
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
        transforms, self._tf_handles = transform_source(
            self, fixed is None, p["tf.world_frame"], p["tf.use_tf2_ros"], self._on_tf
        )
        self.rig = RigAssembler(
            self.cameras,
            self.cfg.outputs.ego_frame,
            p["tf.world_frame"],
            transforms,
            fixed,
            self.cfg.sync.tf_timeout_s,
            warn=self._log.warn,
            require_ego_poses=self.temporal,
        )
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
    def _on_set_parameters(self, params) -> SetParametersResult:
        updates = {p.name: p.value for p in params if p.name in DYNAMIC_PARAMETERS}
        node_updates = {p.name: p.value for p in params if p.name in self._node_params}
        if not updates and not node_updates:
            return SetParametersResult(successful=True)
        try:
            new_cfg = updated_config(self.cfg, updates)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.cfg = new_cfg
        self.rig.tf_timeout_s = float(new_cfg.sync.tf_timeout_s)
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
        sensor = sensor_qos(int(self._node_params["qos.input_depth"]))
        msg_type = CompressedImage if self.cfg.cameras.transport == "compressed" else Image
        # ROS 2 per-topic QoS overrides: -p qos_overrides./CAM_FRONT/image.subscription.reliability:=reliable
        overrides = QoSOverridingOptions.with_default_policies()
        subscribe = partial(self.create_subscription, qos_profile=sensor, qos_overriding_options=overrides)
        self._subs = []
        for i, cam in enumerate(self.cameras):
            self._subs.append(subscribe(msg_type, cam.image_topic, partial(self._on_image, i)))
            if self.rig.fixed is None:
                self._subs.append(subscribe(CameraInfo, cam.info_topic, partial(self._on_camera_info, i)))
        out_qos = output_qos(int(self._node_params["qos.output_depth"]))
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

    def _on_tf(self, static: bool, msg) -> None:
        for t in msg.transforms:
            try:
                self.rig.transforms.add(t, static)
            except ValueError as exc:
                self._log.warn(
                    f"tf:{t.child_frame_id}", f"ignoring transform on {'/tf_static' if static else '/tf'}: {exc}"
                )

    def _on_camera_info(self, index: int, msg: CameraInfo) -> None:
        cam = self.cameras[index]
        try:
            K = convert.camera_info_intrinsics(msg.k, int(msg.width), int(msg.height), cam.info_topic)
        except BadInput as exc:
            self.rig.reject_camera_info(index, str(exc))
            self._log.warn(
                f"info:{problem_key(str(exc))}",
                f"{exc}; frames of {cam.name} are skipped until a valid CameraInfo arrives",
            )
            return
        self.rig.set_camera_info(index, K, (int(msg.width), int(msg.height)), msg.header.frame_id)

    def _on_image(self, index: int, msg) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        self.counters.add("images_received")
        with self._lock:
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
        with self._lock:
            last = [self._sync.last_received(i) for i in range(len(self.cameras))]
            lag = [self._sync.stamp_lag_ns(i) for i in range(len(self.cameras))]
            incomplete = self._sync.counters.sets_incomplete
        cams = [(c.name, c.image_topic) for c in self.cameras]
        warnings = silent_camera_warnings(time.monotonic(), cams, last, lag, timeout, incomplete)
        for i, text in warnings:
            self._log.warn(f"silent:{i}", text)
        return [self.cameras[i].name for i, _ in warnings]

    def _health_snapshot(self, silent: list[str]) -> HealthSnapshot:
        with self._lock:
            complete, incomplete = self._sync.counters.sets_complete, self._sync.counters.sets_incomplete
        return self.counters.snapshot(
            time.monotonic(),
            sets_complete=complete,
            sets_replaced=self._slot.replaced,
            sets_incomplete=incomplete,
            silent_cameras=tuple(silent),
            camera_info_errors=self.rig.camera_info_errors(),
            info=self._health_info,
            history=self.pipeline.status() if self.temporal else None,
        )

    def _publish_diagnostics(self, report) -> None:
        """The health report as one diagnostic_msgs/DiagnosticArray (rules: flashocc_ros/ros/health.py)."""
        name, stamp = f"{self.get_name()}: occupancy", self.get_clock().now().to_msg()
        self.pub_diagnostics.publish(convert.diagnostics_msg(report, name, self._device, stamp))

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
                self.counters.problem("images_rejected", str(exc))
                self._log.warn(f"bad:{problem_key(str(exc))}", f"{exc}; set at {s.stamp_ns * 1e-9:.3f} s skipped")
            except CalibrationPending as exc:
                self.counters.problem("sets_skipped_calibration", str(exc))
                self._log.warn(f"calib:{problem_key(str(exc))}", f"{exc}; set at {s.stamp_ns * 1e-9:.3f} s skipped")
            except Exception as exc:  # keep serving: one clear error line per kind, with the traceback at debug
                self.counters.problem("errors", f"{type(exc).__name__}: {exc}")
                self._log.error(f"error:{type(exc).__name__}", f"processing failed: {type(exc).__name__}: {exc}")
                self.get_logger().debug(traceback.format_exc())

    def _process_when_calibrated(self, s: CameraSet) -> None:
        """Process `s`, waiting up to sync.tf_timeout_s for calibration that may still arrive (rig.py's policy)."""
        timeout = float(self.cfg.sync.tf_timeout_s)

        def late(exc) -> None:
            self._log.warn(
                "ego_pose_late",
                f"{exc} after waiting {timeout:.2f} s (sync.tf_timeout_s): set at {s.stamp_ns * 1e-9:.3f} s "
                "processed WITHOUT ego-motion compensation (one shared ego pose)",
            )

        def superseded() -> bool:
            return self._slot.has_item() or self._slot.closed

        retry_while_pending(partial(self._process, s), timeout, superseded, None if self.temporal else late)

    def stop(self) -> None:
        """Let the worker finish (and publish) the frame in progress and end; call before the context shuts down."""
        self._slot.close()
        self._worker.join(timeout=30)
        if self._worker.is_alive():
            self.get_logger().warning("the worker did not finish its frame within 30 s; shutting down anyway")

    def _process(self, s: CameraSet, compensate: bool = True) -> None:
        t_start = time.perf_counter()
        compressed = self.cfg.cameras.transport == "compressed"
        msgs, image_topics = [f.payload for f in s.frames], [cam.image_topic for cam in self.cameras]
        inputs, sizes = convert.image_inputs(msgs, image_topics, compressed)
        headers = [ImageHeader(w, h, m.header.frame_id, f.stamp_ns) for (w, h), m, f in zip(sizes, msgs, s.frames)]
        calib = self.rig.calibration(headers, compensate)
        if calib.ego2global is None:
            self.counters.add("sets_uncompensated")
        run = self.pipeline.run_jpeg if compressed else self.pipeline.run
        if self.temporal:  # the history is chosen by the set's (key camera's) stamp, in seconds
            run = partial(run, calib=calib, stamp=s.stamp_ns * 1e-9)
        elif compressed:  # the pooling indices of a moving vehicle are computed while the six JPEGs decode
            run = partial(run, calibrate=partial(self._apply_calibration, calib))
        else:
            self._apply_calibration(calib)
        result = convert.run_on_jpegs(run, inputs, image_topics) if compressed else run(inputs)
        self._publish(s, result, t_start)

    def _apply_calibration(self, calib) -> None:
        """Hand `calib` to the pipeline (which recomputes the voxel-pooling indices when it changed) unless it is
        within tf.pose_tolerance_m of the current one; rig changes are logged, ego-pose changes counted."""
        tolerance = float(self._node_params["tf.pose_tolerance_m"])
        outcome = self._calibration.update(calib, tolerance, self.pipeline.set_calibration)
        counter = {"reused": "ego_pose_reuses", "rig": "calibration_updates", "poses": "ego_pose_updates"}
        if outcome in counter:
            self.counters.add(counter[outcome])
        if outcome == "rig":
            height, width = calib.image_hw
            self.get_logger().info(f"calibration changed (image {width}x{height}): voxel-pooling indices recomputed")

    def _publish(self, s: CameraSet, result, t_start: float) -> None:
        t_pub = time.perf_counter()
        cfg = self.cfg.outputs
        header = Header(frame_id=cfg.ego_frame)
        header.stamp = s.frames[s.key_index].payload.header.stamp
        source = self.cfg.model.variant
        if cfg.publish_semantic:
            self.pub_semantic.publish(convert.semantic_to_msg(result.semantic, header, source))
        panoptic = getattr(result, "panoptic", None)
        if self.pub_panoptic is not None and cfg.publish_panoptic and panoptic is not None:
            mode = self.cfg.model.pano_mode
            self.pub_panoptic.publish(
                convert.panoptic_to_msg(result.semantic, panoptic, result.instances, header, source, mode)
            )
        if cfg.publish_pointcloud:
            self.pub_points.publish(convert.pointcloud2_msg(convert.occupied_points(result.semantic, panoptic), header))
        if cfg.publish_markers:
            self.pub_markers.publish(convert.marker_array_msg(result.semantic, header, cfg.max_markers))
        t_end = time.perf_counter()
        frames = self.counters.add("frames_processed")
        latency_ms = (time.monotonic() - s.completed_at) * 1e3
        self.counters.latency(latency_ms)
        if cfg.publish_timing:
            with self._lock:
                incomplete = self._sync.counters.sets_incomplete
            msg = convert.timing_msg(
                header,
                self.backend_name,
                getattr(result, "timings_ms", None),
                publish_ms=(t_end - t_pub) * 1e3,
                total_ms=(t_end - t_start) * 1e3,
                latency_ms=latency_ms,
                sync_spread_ms=s.spread_ns * 1e-6,
                frames_processed=frames,
                sets_replaced=self._slot.replaced,
                sets_incomplete=incomplete,
                images_rejected=self.counters.images_rejected,
            )
            self.pub_timing.publish(msg)


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
