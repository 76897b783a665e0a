"""A small transform tree: the core of the built-in /tf_static (and /tf) reader (no ROS import).

Used by the node when tf2_ros is not installed (the pip-only ROS install has no tf2_ros): it composes the chain
ego <- ... <- camera from TransformStamped-like records. With tf2_ros installed the node uses tf2_ros instead and
only `transform_to_matrix` from here.

Also loads a calibration YAML for fixed rigs (intrinsics + camera->ego per camera), see `load_calibration_file`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flashocc_ros.config import CAMERA_NAMES, ConfigError


class TransformError(LookupError):
    """A transform cannot be looked up; the message names the frames and what is known."""


def quaternion_xyzw_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> 3x3 rotation (float64). Raises ValueError for a zero/NaN quaternion."""
    q = np.array([w, x, y, z], dtype=np.float64)
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"invalid quaternion (x={x}, y={y}, z={z}, w={w})")
    w, x, y, z = q / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def rigid(rotation: np.ndarray, translation) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return m


def transform_to_matrix(transform: Any) -> np.ndarray:
    """geometry_msgs/Transform-like (translation.x.., rotation.x..w) -> 4x4 float64 child->parent."""
    t, r = transform.translation, transform.rotation
    return rigid(quaternion_xyzw_to_matrix(r.x, r.y, r.z, r.w), (t.x, t.y, t.z))


@dataclass
class _Edge:
    parent: str
    child_to_parent: np.ndarray  # 4x4 float64
    stamp_ns: int
    static: bool


@dataclass
class Lookup:
    """Result of a lookup: `matrix` maps points in the source frame to the target frame; `oldest_dynamic_ns` is
    the stamp of the oldest non-static edge on the path (None when the whole chain is static)."""

    matrix: np.ndarray
    oldest_dynamic_ns: int | None


class TransformTree:
    """Latest-value transform tree keyed by child frame (each frame has one parent, as in tf2)."""

    def __init__(self) -> None:
        self._edges: dict[str, _Edge] = {}

    def add(self, record: Any, static: bool) -> None:
        """Add a TransformStamped-like record (header.frame_id, header.stamp, child_frame_id, transform)."""
        parent = _strip(record.header.frame_id)
        child = _strip(record.child_frame_id)
        if not parent or not child:
            raise ValueError(f"transform with empty frame id (parent={parent!r}, child={child!r})")
        if parent == child:
            raise ValueError(f"transform from frame {child!r} to itself")
        stamp = record.header.stamp
        stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
        self._edges[child] = _Edge(parent, transform_to_matrix(record.transform), stamp_ns, static)

    def add_all(self, records: Iterable[Any], static: bool) -> int:
        n = 0
        for r in records:
            self.add(r, static)
            n += 1
        return n

    def frames(self) -> list[str]:
        names = set(self._edges)
        names.update(e.parent for e in self._edges.values())
        return sorted(names)

    def _path_to_root(self, frame: str) -> list[str]:
        path = [frame]
        seen = {frame}
        while path[-1] in self._edges:
            parent = self._edges[path[-1]].parent
            if parent in seen:
                raise TransformError(f"transform loop through frame {parent!r}")
            seen.add(parent)
            path.append(parent)
        return path

    def lookup(self, target_frame: str, source_frame: str) -> Lookup:
        """Transform taking points in `source_frame` to `target_frame` (tf2's lookup_transform(target, source))."""
        target, source = _strip(target_frame), _strip(source_frame)
        if target == source:
            return Lookup(np.eye(4), None)
        known = self.frames()
        for name in (target, source):
            if name not in known:
                raise TransformError(
                    f"frame {name!r} does not exist in the transform tree (known frames: {', '.join(known) or 'none'})"
                )
        up_source = self._path_to_root(source)
        up_target = self._path_to_root(target)
        common = next((f for f in up_source if f in set(up_target)), None)
        if common is None:
            raise TransformError(
                f"frames {target!r} and {source!r} are not connected (roots {up_target[-1]!r} and {up_source[-1]!r})"
            )
        oldest: int | None = None
        source_to_common = np.eye(4)
        for f in up_source[: up_source.index(common)]:
            e = self._edges[f]
            source_to_common = e.child_to_parent @ source_to_common
            if not e.static:
                oldest = e.stamp_ns if oldest is None else min(oldest, e.stamp_ns)
        target_to_common = np.eye(4)
        for f in up_target[: up_target.index(common)]:
            e = self._edges[f]
            target_to_common = e.child_to_parent @ target_to_common
            if not e.static:
                oldest = e.stamp_ns if oldest is None else min(oldest, e.stamp_ns)
        return Lookup(np.linalg.inv(target_to_common) @ source_to_common, oldest)


def _strip(frame: str) -> str:
    return frame[1:] if frame.startswith("/") else frame


# --------------------------------------------------------------------------------------------------------------
# Calibration YAML for fixed rigs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class CameraCalibration:
    intrinsics: np.ndarray  # (3,3) float64 K of the source image
    sensor2ego: np.ndarray  # (4,4) float64 camera optical frame -> ego
    image_hw: tuple[int, int]


def load_calibration_file(path: str | Path) -> dict[str, CameraCalibration]:
    """Read a rig calibration YAML::

        image_size: [1600, 900]          # width, height (optional per camera, overrides this)
        cameras:
          CAM_FRONT_LEFT:
            K: [fx, 0, cx, 0, fy, cy, 0, 0, 1]     # row-major 3x3
            translation: [x, y, z]                  # camera -> ego, metres
            rotation_xyzw: [x, y, z, w]             # or rotation_wxyz (nuScenes order)
          ...

    All six cameras are required. Raises ConfigError naming the file, camera and key on any problem.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read calibration file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'cameras' mapping")
    default_size = data.get("image_size")
    out: dict[str, CameraCalibration] = {}
    for cam in CAMERA_NAMES:
        entry = data["cameras"].get(cam)
        where = f"{path}: cameras.{cam}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: missing")
        K = np.asarray(entry.get("K", []), dtype=np.float64)
        if K.size != 9:
            raise ConfigError(f"{where}.K: expected 9 numbers, got {entry.get('K')!r}")
        K = K.reshape(3, 3)
        try:
            check_intrinsics(K)
        except ValueError as exc:
            raise ConfigError(f"{where}.K: {exc}") from exc
        t = np.asarray(entry.get("translation", []), dtype=np.float64)
        if t.shape != (3,) or not np.all(np.isfinite(t)):
            raise ConfigError(f"{where}.translation: expected 3 finite numbers, got {entry.get('translation')!r}")
        if "rotation_xyzw" in entry:
            q = list(entry["rotation_xyzw"])
        elif "rotation_wxyz" in entry:
            w, *xyz = list(entry["rotation_wxyz"])
            q = [*xyz, w]
        else:
            raise ConfigError(f"{where}: needs rotation_xyzw or rotation_wxyz")
        try:
            if len(q) != 4:
                raise ValueError(f"expected 4 numbers, got {q!r}")
            rot = quaternion_xyzw_to_matrix(*[float(v) for v in q])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where} rotation: {exc}") from exc
        size = entry.get("image_size", default_size)
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise ConfigError(f"{where}.image_size: expected [width, height] positive integers, got {size!r}")
        out[cam] = CameraCalibration(K, rigid(rot, t), (int(size[1]), int(size[0])))
    return out


def check_intrinsics(K: np.ndarray) -> None:
    """Raise ValueError unless K is a finite pinhole matrix with positive focal lengths."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must be 3x3, got shape {K.shape}")
    if not np.all(np.isfinite(K)):
        raise ValueError(f"K contains NaN/inf: {K.ravel().tolist()}")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f"K has non-positive focal length (fx={K[0, 0]}, fy={K[1, 1]})")
    if K[2, 2] != 1.0 or K[2, 0] != 0.0 or K[2, 1] != 0.0:
        raise ValueError(f"K's last row must be [0, 0, 1], got {K[2].tolist()}")
