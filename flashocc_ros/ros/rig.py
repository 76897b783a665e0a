"""Rig assembly without ROS: camera infos + image headers + a transform source -> `geometry.RigCalibration`.

The node hands this module what it read from messages (K, size and frame of each CameraInfo; size, frame and stamp
of each image of a synchronized set) and a `TransformSource`; the module decides:

- pending: no CameraInfo yet, a camera -> ego transform missing or older than ``sync.tf_timeout_s`` than the
  image (`CalibrationPending`), or a world <- ego pose newer than the newest one received (`EgoPosePending`):
  the data may still arrive, `retry_while_pending` waits for it;
- unavailable: no world <- ego pose for a stamp and none will come (`EgoPoseUnavailable`): the set is processed
  with one shared ego pose, after a rate-limited warning; with ``require_ego_poses`` (the temporal variants, which
  place previous frames by the ego poses) the set is skipped instead (`EgoPosesRequired`);
- bad input: image sizes that disagree with their CameraInfo or with each other (`ros_convert.BadInput`);
- the pose tolerance (`CalibrationTracker`): whether a new calibration is close enough to the pipeline's to keep
  its voxel-pooling indices.

Two transform sources: `TransformTreeSource` (the built-in /tf_static + /tf reader, `tf_tree.TransformTree`) and
`Tf2BufferSource` (a tf2_ros Buffer; tf2_ros is imported only when it is used).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np

from flashocc_ros.config import ConfigError
from flashocc_ros.network.geometry import RigCalibration, sensor_to_key_ego
from flashocc_ros.ros.messages import BadInput, check_image_size
from flashocc_ros.ros.ratelimit import problem_key
from flashocc_ros.ros.tf_tree import (
    DEFAULT_CACHE_TIME_S,
    CameraCalibration,
    ExtrapolationError,
    Lookup,
    TransformError,
    TransformTree,
    transform_to_matrix,
)
from flashocc_ros.stamps import stamp_to_ns

POSE_TOLERANCE_LEVER_M = 50.0  # rotation differences count as the displacement they cause at this range
RETRY_POLL_S = 0.02  # how often a pending calibration is looked up again

_OFF = "ego-motion compensation is OFF (all six cameras share one ego pose)"


class CalibrationPending(RuntimeError):
    """Calibration for a set is not available (no CameraInfo yet, missing or stale TF)."""


class EgoPosePending(CalibrationPending):
    """A camera's stamp is newer than the newest world <- ego pose: the pose may still arrive."""


class EgoPoseUnavailable(RuntimeError):
    """No world <- ego pose for a camera's stamp and none will come (world frame unknown, or stamp too old)."""

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(f"{reason}; {_OFF}{hint}")
        self.reason = reason


TEMPORAL_NEEDS_POSES = "temporal variants need the tf.world_frame -> ego TF (the ego pose at every camera's stamp)"


class EgoPosesRequired(CalibrationPending):
    """The ego poses are required (temporal variants) but not available: the set is skipped (after waiting up to
    sync.tf_timeout_s, as for any pending calibration)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}: {TEMPORAL_NEEDS_POSES}")


# --------------------------------------------------------------------------------------------------------------
# Transform sources
# --------------------------------------------------------------------------------------------------------------


class TransformSource(Protocol):
    """Where transforms come from. `lookup(target, source, stamp_ns)` returns the transform taking points in
    `source` to `target` (`Lookup.matrix`) at `stamp_ns` (None: the newest), and the stamp of the oldest dynamic
    transform used (`Lookup.oldest_dynamic_ns`, None when the chain is static). Raises `tf_tree.TransformError`
    when there is no such transform, `tf_tree.ExtrapolationError` (with `future`) when `stamp_ns` is outside
    the history."""

    def lookup(self, target: str, source: str, stamp_ns: int | None = None) -> Lookup: ...


class TransformTreeSource:
    """The built-in transform tree, safe to fill from the executor thread while the worker looks up."""

    def __init__(self, cache_time_s: float = DEFAULT_CACHE_TIME_S) -> None:
        self._tree = TransformTree(cache_time_s)
        self._lock = threading.Lock()

    def add(self, record: Any, static: bool) -> None:
        """Add a TransformStamped-like record; ValueError for an invalid one."""
        with self._lock:
            self._tree.add(record, static)

    def lookup(self, target: str, source: str, stamp_ns: int | None = None) -> Lookup:
        with self._lock:
            return self._tree.lookup(target, source, stamp_ns)


class Tf2BufferSource:
    """A tf2_ros Buffer as a `TransformSource` (tf2's exceptions become tf_tree's). `tf2` and `make_time` default
    to the tf2_ros module and rclpy.time.Time(nanoseconds=...); they are parameters so that tests need no ROS."""

    def __init__(self, buffer: Any, tf2: Any = None, make_time: Callable[[int | None], Any] | None = None) -> None:
        if tf2 is None:
            import tf2_ros as tf2
        if make_time is None:
            from rclpy.time import Time

            def make_time(ns):
                return Time() if ns is None else Time(nanoseconds=ns)

        self._buffer, self._tf2, self._make_time = buffer, tf2, make_time

    def lookup(self, target: str, source: str, stamp_ns: int | None = None) -> Lookup:
        tf2 = self._tf2
        try:
            t = self._buffer.lookup_transform(target, source, self._make_time(stamp_ns))
        except tf2.ExtrapolationException as exc:
            raise ExtrapolationError(str(exc), future="past" not in str(exc)) from exc
        except (tf2.LookupException, tf2.ConnectivityException) as exc:
            raise TransformError(str(exc)) from exc
        t_ns = stamp_to_ns(t.header.stamp)
        return Lookup(transform_to_matrix(t.transform), t_ns or None)  # stamp 0: a static chain


# --------------------------------------------------------------------------------------------------------------
# Rig assembly
# --------------------------------------------------------------------------------------------------------------


class CameraTopics(NamedTuple):
    name: str  # nuScenes camera name (config.CAMERA_NAMES)
    image_topic: str
    info_topic: str


@dataclass(frozen=True)
class ImageHeader:
    """What the rig needs of one image of a set: its size (from the image or the JPEG header), frame and stamp."""

    width: int
    height: int
    frame_id: str
    stamp_ns: int


@dataclass
class _CameraInfo:
    intrinsics: np.ndarray | None = None  # valid K from the latest good CameraInfo
    size: tuple[int, int] | None = None  # (width, height) of that CameraInfo
    frame_id: str = ""
    error: str = ""  # why the latest CameraInfo was rejected ("" = ok)


class RigAssembler:
    """Builds the `RigCalibration` of a synchronized set (cameras in network order).

    `cameras`: (name, image topic, camera_info topic) per camera (the topics only name the problem in errors).
    `fixed`: a calibration file's cameras (`tf_tree.load_calibration_file`); then CameraInfo and camera TF are
    not used. `transforms`: camera -> ego (when not fixed) and world <- ego poses; None = no TF at all.
    `world_frame`: '' = no per-camera ego poses. `warn(key, text)`: rate-limited warnings (ego pose unavailable).
    `require_ego_poses` (temporal variants): no set without its ego poses (`EgoPosesRequired` instead of one
    shared ego pose); ConfigError at once when `world_frame` is empty.
    """

    def __init__(
        self,
        cameras: Sequence[tuple[str, str, str]],
        ego_frame: str,
        world_frame: str = "",
        transforms: TransformSource | None = None,
        fixed: dict[str, CameraCalibration] | None = None,
        tf_timeout_s: float = 1.0,
        warn: Callable[[str, str], None] | None = None,
        require_ego_poses: bool = False,
    ) -> None:
        if require_ego_poses and not world_frame:
            raise ConfigError(f"tf.world_frame is empty: the {TEMPORAL_NEEDS_POSES}")
        self.require_ego_poses = bool(require_ego_poses)
        self.cameras = [CameraTopics(*c) for c in cameras]
        self.ego_frame = ego_frame
        self.world_frame = world_frame
        self.transforms = transforms
        self.fixed = fixed
        self.tf_timeout_s = float(tf_timeout_s)
        self._warn = warn or (lambda key, text: None)
        self._infos = [_CameraInfo() for _ in self.cameras]
        self._lock = threading.Lock()

    # CameraInfo state (written by the executor thread, read by the worker)
    def set_camera_info(self, index: int, intrinsics: np.ndarray, size: tuple[int, int], frame_id: str) -> None:
        with self._lock:
            self._infos[index] = _CameraInfo(intrinsics, (int(size[0]), int(size[1])), frame_id, "")

    def reject_camera_info(self, index: int, error: str) -> None:
        """The latest CameraInfo of camera `index` is invalid: its frames are pending until a valid one arrives."""
        with self._lock:
            self._infos[index].intrinsics, self._infos[index].error = None, error

    def camera_info_errors(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(info.error for info in self._infos if info.error)

    def calibration(self, images: Sequence[ImageHeader], compensate: bool = True) -> RigCalibration:
        """The calibration of one set; `compensate` False: one shared ego pose (no world <- ego lookups).

        Raises CalibrationPending / EgoPosePending (may still arrive) or BadInput (sizes)."""
        if len(images) != len(self.cameras):
            raise ValueError(f"expected {len(self.cameras)} images, got {len(images)}")
        Ks, s2e = [], []
        for (name, image_topic, info_topic), info, image in zip(self.cameras, self._info_copy(), images):
            if self.fixed is not None:
                cal = self.fixed[name]
                check_image_size(image_topic, image.width, image.height, (cal.image_hw[1], cal.image_hw[0]))
                Ks.append(cal.intrinsics)
                s2e.append(cal.sensor2ego)
                continue
            if info.intrinsics is None:
                raise CalibrationPending(info.error or f"no CameraInfo received yet on {info_topic}")
            check_image_size(image_topic, image.width, image.height, info.size)
            Ks.append(info.intrinsics)
            frame_id = image.frame_id or info.frame_id
            if not frame_id:
                raise BadInput(f"{image_topic}: header.frame_id is empty and so is its CameraInfo's")
            s2e.append(self.extrinsics(frame_id, image.stamp_ns))
        sizes = [(image.width, image.height) for image in images]
        if len(set(sizes)) != 1:
            detail = ", ".join(f"{c[0]} {w}x{h}" for c, (w, h) in zip(self.cameras, sizes))
            raise BadInput(f"the six images must have one size, got {detail}")
        width, height = sizes[0]
        ego2global = self.ego_poses([image.stamp_ns for image in images]) if compensate else None
        if ego2global is None and self.require_ego_poses:
            if self.transforms is None:
                raise EgoPosesRequired("no transform source (neither tf2_ros nor tf2_msgs is installed)")
            raise EgoPosesRequired("the set was to be processed without its ego poses")
        return RigCalibration(np.stack(Ks), np.stack(s2e), ego2global, (height, width))

    def _info_copy(self) -> list[_CameraInfo]:
        with self._lock:
            return [_CameraInfo(i.intrinsics, i.size, i.frame_id, i.error) for i in self._infos]

    def extrinsics(self, camera_frame: str, stamp_ns: int) -> np.ndarray:
        """(4,4) camera -> ego, the newest transform; CalibrationPending when missing or older than
        tf_timeout_s than the image."""
        ego = self.ego_frame
        if self.transforms is None:
            raise CalibrationPending(f"no transform {ego} <- {camera_frame}: no transform source")
        try:
            found = self.transforms.lookup(ego, camera_frame)
        except TransformError as exc:
            raise CalibrationPending(f"no transform {ego} <- {camera_frame}: {exc}") from exc
        timeout_ns = int(self.tf_timeout_s * 1e9)
        if found.oldest_dynamic_ns is not None and stamp_ns - found.oldest_dynamic_ns > timeout_ns:
            age = (stamp_ns - found.oldest_dynamic_ns) * 1e-9
            raise CalibrationPending(f"stale transform {ego} <- {camera_frame}: {age:.2f} s older than the image")
        return found.matrix

    def ego_poses(self, stamps_ns: Sequence[int]) -> np.ndarray | None:
        """(6,4,4) world <- ego at each camera's stamp (the official per-camera ego2global), or None (with a
        warning) when no such pose exists; EgoPosePending when one may still arrive."""
        if not self.world_frame or self.transforms is None:
            return None
        try:
            return np.stack([self.ego_pose(stamp) for stamp in stamps_ns])
        except EgoPoseUnavailable as exc:
            if self.require_ego_poses:
                raise EgoPosesRequired(exc.reason) from exc
            self._warn(f"ego_pose:{problem_key(str(exc))}", str(exc))
            return None

    def ego_pose(self, stamp_ns: int) -> np.ndarray:
        world, ego = self.world_frame, self.ego_frame
        try:
            return self.transforms.lookup(world, ego, stamp_ns).matrix
        except ExtrapolationError as exc:
            if exc.future:
                raise EgoPosePending(f"no {world} <- {ego} pose yet at {stamp_ns * 1e-9:.6f} s ({exc})") from exc
            raise EgoPoseUnavailable(f"no {world} <- {ego} pose at {stamp_ns * 1e-9:.6f} s ({exc})") from exc
        except TransformError as exc:
            raise EgoPoseUnavailable(
                f"tf.world_frame '{world}': no {world} <- {ego} transform ({exc})",
                " (set tf.world_frame to the frame of your ego poses, or '' to silence this)",
            ) from exc


# --------------------------------------------------------------------------------------------------------------
# Waiting for a calibration that may still arrive
# --------------------------------------------------------------------------------------------------------------

T = TypeVar("T")


def retry_while_pending(
    attempt: Callable[[bool], T],
    timeout_s: float,
    superseded: Callable[[], bool],
    on_late_pose: Callable[[EgoPosePending], None] | None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`attempt(compensate)` until it does not raise CalibrationPending (a bag publishes a frame's CameraInfo right
    after its image), for at most `timeout_s`, and not once `superseded()` (a newer set is waiting, or stopping).

    A world <- ego pose still missing at the deadline does not drop the set: `on_late_pose` is told and the set
    is attempted once more without ego-motion compensation; with `on_late_pose` None (the ego poses are required:
    temporal variants) the set is dropped (`EgoPosesRequired`). Any other pending calibration is re-raised."""
    deadline = clock() + timeout_s
    compensate = True
    while True:
        try:
            return attempt(compensate)
        except EgoPosePending as exc:
            if superseded():
                raise
            if clock() >= deadline:
                if on_late_pose is None:
                    raise EgoPosesRequired(f"{exc} after waiting {timeout_s:.2f} s (sync.tf_timeout_s)") from exc
                on_late_pose(exc)
                compensate = False
                continue
            sleep(RETRY_POLL_S)
        except CalibrationPending:
            if clock() >= deadline or superseded():
                raise
            sleep(RETRY_POLL_S)


# --------------------------------------------------------------------------------------------------------------
# Which calibration the pipeline holds
# --------------------------------------------------------------------------------------------------------------


def rig_digest(calib: RigCalibration) -> str:
    """Digest of what defines the rig (K, camera -> ego, image size), without the per-frame ego poses."""
    h = hashlib.sha256(np.ascontiguousarray(calib.intrinsics, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(calib.sensor2ego, dtype=np.float64).tobytes())
    h.update(repr(calib.image_hw).encode())
    return h.hexdigest()


class CalibrationTracker:
    """Tracks the calibration handed to the pipeline and decides what a new one means.

    `update(calib, tolerance_m, apply)` returns
    - "reused": same rig and every camera's pose in the key ego frame moved less than `tolerance_m` (translation
      plus rotation as displacement at POSE_TOLERANCE_LEVER_M): `apply` is not called, the indices are kept;
    - "unchanged": `apply(calib)` returned False (the pipeline already had these values);
    - "rig": K, camera -> ego or the image size changed; "poses": only the per-camera ego poses changed.
    """

    def __init__(self) -> None:
        self.rig: str | None = None  # rig_digest of the pipeline's calibration
        self.sensor2keyego: np.ndarray | None = None  # its camera -> key ego (float64)

    def update(self, calib: RigCalibration, tolerance_m: float, apply: Callable[[RigCalibration], bool]) -> str:
        rig = rig_digest(calib)
        s2ke = sensor_to_key_ego(calib.sensor2ego, calib.ego2global).astype(np.float64)
        if tolerance_m > 0 and rig == self.rig and self.sensor2keyego is not None:
            delta = np.abs(s2ke - self.sensor2keyego)
            moved = delta[:, :3, 3].max() + POSE_TOLERANCE_LEVER_M * delta[:, :3, :3].max()
            if moved < tolerance_m:
                return "reused"
        if not apply(calib):
            return "unchanged"
        outcome = "rig" if rig != self.rig else "poses"
        self.rig, self.sensor2keyego = rig, s2ke
        return outcome
