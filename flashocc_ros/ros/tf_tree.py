"""A small transform tree: the core of the built-in /tf_static (and /tf) reader (no ROS import).

Used by the node when tf2_ros is not installed (the pip-only ROS install has no tf2_ros): it composes the chain
ego <- ... <- camera from TransformStamped-like records. Dynamic edges keep a bounded, time-indexed history (like
tf2's cache), so `lookup(target, source, stamp_ns)` gives the transform at an image's stamp: the exact stored value
when a transform carries that stamp, otherwise interpolated between the two nearest ones (slerp rotation, lerp
translation, as tf2 does). With tf2_ros installed the node uses tf2_ros instead and only `transform_to_matrix` from
here.

Also loads a calibration YAML for fixed rigs (intrinsics + camera->ego per camera), see `load_calibration_file`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flashocc_ros.config import CAMERA_NAMES, ConfigError
from flashocc_ros.stamps import stamp_to_ns
from flashocc_ros.transforms import quaternion_xyzw_to_matrix, rigid

DEFAULT_CACHE_TIME_S = 10.0  # history kept per dynamic edge, as tf2's default Buffer cache_time
MAX_HISTORY = 10_000  # hard bound on stored transforms per dynamic edge (whatever their rate)


class TransformError(LookupError):
    """A transform cannot be looked up; the message names the frames and what is known."""


class ExtrapolationError(TransformError):
    """The requested time is outside a dynamic edge's history. `future` is True when the time is newer than the
    newest stored transform (waiting may help), False when it is older than the oldest one (it will not)."""

    def __init__(self, text: str, future: bool):
        super().__init__(text)
        self.future = future


def transform_to_matrix(transform: Any) -> np.ndarray:
    """geometry_msgs/Transform-like (translation.x.., rotation.x..w) -> 4x4 float64 child->parent."""
    t, r = transform.translation, transform.rotation
    return rigid(quaternion_xyzw_to_matrix(r.x, r.y, r.z, r.w), (t.x, t.y, t.z))


def slerp_xyzw(q0: np.ndarray, q1: np.ndarray, fraction: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (x, y, z, w) along the shorter arc.

    Written here (a few lines) rather than via scipy's Slerp, which is not a dependency of the package."""
    q0, q1 = np.asarray(q0, dtype=np.float64), np.asarray(q1, dtype=np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation: take the short way
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: normalised lerp is exact to ~1e-8 and avoids dividing by sin(~0)
        q = q0 + fraction * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(min(dot, 1.0))
    s = np.sin(theta)
    return (np.sin((1.0 - fraction) * theta) / s) * q0 + (np.sin(fraction * theta) / s) * q1


def interpolate_transform(
    stamp0_ns: int, rigid0: tuple[np.ndarray, np.ndarray], stamp1_ns: int, rigid1: tuple[np.ndarray, np.ndarray], at_ns
) -> np.ndarray:
    """4x4 transform at `at_ns` between two stamped (translation (3,), quaternion xyzw (4,)) poses."""
    fraction = 0.0 if stamp1_ns == stamp0_ns else (at_ns - stamp0_ns) / (stamp1_ns - stamp0_ns)
    (t0, q0), (t1, q1) = rigid0, rigid1
    q = slerp_xyzw(q0, q1, fraction)
    return rigid(quaternion_xyzw_to_matrix(*q), t0 + fraction * (t1 - t0))


@dataclass
class _Sample:
    stamp_ns: int
    matrix: np.ndarray  # 4x4 float64 child -> parent, exactly as transform_to_matrix gives it
    translation: np.ndarray  # (3,)
    quaternion_xyzw: np.ndarray  # (4,) unit


@dataclass
class _Edge:
    parent: str
    child_to_parent: np.ndarray  # 4x4 float64 (the newest value)
    stamp_ns: int  # stamp of the newest value
    static: bool
    history: list[_Sample] = field(default_factory=list)  # dynamic edges: sorted by stamp, unique stamps

    def at(self, child: str, stamp_ns: int) -> tuple[np.ndarray, int]:
        """(matrix, stamp of the older sample used) of this dynamic edge at `stamp_ns`."""
        h = self.history
        stamps = [s.stamp_ns for s in h]
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(h) and stamps[i] == stamp_ns:
            return h[i].matrix, stamp_ns
        if i == 0 or i == len(h):
            future = i == len(h)
            raise ExtrapolationError(
                f"transform {self.parent} <- {child} at {stamp_ns * 1e-9:.6f} s is outside its history "
                f"[{stamps[0] * 1e-9:.6f}, {stamps[-1] * 1e-9:.6f}] s "
                f"({'newer than the newest' if future else 'older than the oldest'} transform)",
                future,
            )
        a, b = h[i - 1], h[i]
        return (
            interpolate_transform(
                a.stamp_ns, (a.translation, a.quaternion_xyzw), b.stamp_ns, (b.translation, b.quaternion_xyzw), stamp_ns
            ),
            a.stamp_ns,
        )


@dataclass
class Lookup:
    """Result of a lookup: `matrix` maps points in the source frame to the target frame; `oldest_dynamic_ns` is
    the stamp of the oldest dynamic transform used on the path (for a lookup at a time: the earlier of the two
    interpolated ones; None when the whole chain is static)."""

    matrix: np.ndarray
    oldest_dynamic_ns: int | None


class TransformTree:
    """Transform tree keyed by child frame (each frame has one parent, as in tf2).

    Static edges hold one value. Dynamic edges hold their transforms of the last `cache_time_s` (relative to the
    newest stamp of that edge; at most MAX_HISTORY). A transform much older than the history (more than
    `cache_time_s` before the newest: a bag loop or a clock reset) restarts that edge's history; one with a stamp
    already stored replaces it.
    """

    def __init__(self, cache_time_s: float = DEFAULT_CACHE_TIME_S) -> None:
        if not cache_time_s > 0:
            raise ValueError(f"cache_time_s must be > 0, got {cache_time_s!r}")
        self.cache_time_ns = int(cache_time_s * 1e9)
        self._edges: dict[str, _Edge] = {}

    def add(self, record: Any, static: bool) -> None:
        """Add a TransformStamped-like record (header.frame_id, header.stamp, child_frame_id, transform)."""
        parent = _strip(record.header.frame_id)
        child = _strip(record.child_frame_id)
        if not parent or not child:
            raise ValueError(f"transform with empty frame id (parent={parent!r}, child={child!r})")
        if parent == child:
            raise ValueError(f"transform from frame {child!r} to itself")
        stamp_ns = stamp_to_ns(record.header.stamp)
        matrix = transform_to_matrix(record.transform)
        if static:
            self._edges[child] = _Edge(parent, matrix, stamp_ns, True)
            return
        r, t = record.transform.rotation, record.transform.translation
        q = np.array([r.x, r.y, r.z, r.w], dtype=np.float64)
        sample = _Sample(stamp_ns, matrix, np.array([t.x, t.y, t.z], dtype=np.float64), q / np.linalg.norm(q))
        edge = self._edges.get(child)
        if edge is None or edge.static or edge.parent != parent or stamp_ns < edge.stamp_ns - self.cache_time_ns:
            self._edges[child] = _Edge(parent, matrix, stamp_ns, False, [sample])
            return
        h = edge.history
        if stamp_ns > h[-1].stamp_ns:  # the usual case: in order
            h.append(sample)
        else:
            i = bisect.bisect_left([s.stamp_ns for s in h], stamp_ns)
            if i < len(h) and h[i].stamp_ns == stamp_ns:
                h[i] = sample
            else:
                h.insert(i, sample)
        newest = h[-1]
        edge.child_to_parent, edge.stamp_ns = newest.matrix, newest.stamp_ns
        keep_from = newest.stamp_ns - self.cache_time_ns
        drop = 0
        while drop < len(h) - 1 and (h[drop].stamp_ns < keep_from or len(h) - drop > MAX_HISTORY):
            drop += 1
        if drop:
            del h[:drop]

    def history_stamps(self, child_frame: str) -> list[int]:
        """Stamps stored for a dynamic edge (oldest first); [] for static or unknown frames."""
        edge = self._edges.get(_strip(child_frame))
        return [] if edge is None else [s.stamp_ns for s in edge.history]

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

    def has_frame(self, frame: str) -> bool:
        name = _strip(frame)
        return name in self._edges or any(e.parent == name for e in self._edges.values())

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int | None = None) -> Lookup:
        """Transform taking points in `source_frame` to `target_frame` (tf2's lookup_transform(target, source)).

        `stamp_ns` None: the newest value of every edge. Otherwise every dynamic edge on the path is taken at
        that time (exact stored value or interpolation); ExtrapolationError when it is outside an edge's history.
        """
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

        def up_to_common(path: list[str]) -> np.ndarray:
            nonlocal oldest
            to_common = np.eye(4)
            for f in path[: path.index(common)]:
                e = self._edges[f]
                if e.static:
                    to_common = e.child_to_parent @ to_common
                    continue
                matrix, used_ns = (e.child_to_parent, e.stamp_ns) if stamp_ns is None else e.at(f, stamp_ns)
                to_common = matrix @ to_common
                oldest = used_ns if oldest is None else min(oldest, used_ns)
            return to_common

        source_to_common = up_to_common(up_source)
        target_to_common = up_to_common(up_target)
        if np.array_equal(target_to_common, np.eye(4)):
            return Lookup(source_to_common, oldest)  # target is the common frame: no inverse, keeps exact values
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
