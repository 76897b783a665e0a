"""numpy <-> ROS message conversion for flashocc_node (no rclpy import).

The array work (voxel selection, point records, K checks, image views) is plain numpy and testable without ROS;
message classes (sensor_msgs, visualization_msgs, flashocc_ros.msg) are imported lazily inside the functions
that build messages. The occupancy messages' layout (and their decoders) is ``occupancy_codec``'s, shared with the
bag writer; ``codec.fill_rclpy`` assigns bulk fields as bytes / array.array, never as numpy arrays (numpy
assignment to uint8[]/uint16[] fields costs ~100x more, see ENVIRONMENT.md).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from flashocc_ros.config import FIRST_INSTANCE_ID, FREE_INDEX, OCC_GRID, GridSpec
from flashocc_ros.grids import check_labels, check_panoptic
from flashocc_ros.network.preprocess import jpeg_size as jpeg_hw
from flashocc_ros.ros import occupancy_codec as codec
from flashocc_ros.ros.occupancy_codec import (  # noqa: F401 (re-exported: the decoders and the input error)
    BadInput,
    OccupancyGrid,
    occupancy_from_msg,
    panoptic_from_msg,
)
from flashocc_ros.ros.tf_tree import check_intrinsics
from flashocc_ros.viz.colors import CLASS_PALETTE, instance_colors

# --------------------------------------------------------------------------------------------------------------
# Occupancy grids (the layout and the decoders live in occupancy_codec)
# --------------------------------------------------------------------------------------------------------------


def fill_semantic_msg(msg: Any, semantic: np.ndarray, header: Any, source: str, spec: GridSpec = OCC_GRID) -> Any:
    """Fill a flashocc_ros/SemanticOccupancy from a (200,200,16) uint8 [ix,iy,iz] grid."""
    return codec.fill_rclpy(msg, codec.semantic_fields(semantic, header, source, spec))


def semantic_to_msg(semantic: np.ndarray, header: Any, source: str, spec: GridSpec = OCC_GRID) -> Any:
    from flashocc_ros.msg import SemanticOccupancy

    return fill_semantic_msg(SemanticOccupancy(), semantic, header, source, spec)


def panoptic_to_msg(
    semantic: np.ndarray,
    panoptic: np.ndarray,
    instances: Any,
    header: Any,
    source: str,
    mode: str,
    spec: GridSpec = OCC_GRID,
) -> Any:
    """flashocc_ros/PanopticOccupancy from the semantic grid, the int32 panoptic grid and an InstanceTable."""
    from flashocc_ros.msg import PanopticOccupancy

    fields = codec.panoptic_fields(semantic, panoptic, instances, header, source, mode, spec)
    return codec.build_rclpy(PanopticOccupancy, fields)


# --------------------------------------------------------------------------------------------------------------
# Point cloud of non-free voxels
# --------------------------------------------------------------------------------------------------------------

# x, y, z, rgb (RViz convention: float32 holding 0x00RRGGBB bits), label, instance (0 = none).
OCCUPANCY_POINT_DTYPE = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4"), ("label", "<u2"), ("instance", "<u2")]
)


@functools.lru_cache(maxsize=4)
def _voxel_records(spec: GridSpec) -> np.ndarray:
    """(X*Y*Z,) OCCUPANCY_POINT_DTYPE records with x, y, z = every voxel centre in [ix,iy,iz] C order, the rest 0
    (cached, read-only; 12.8 MB for the 200x200x16 grid). Taking the occupied rows of it is one contiguous gather."""
    ix, iy, iz = np.unravel_index(np.arange(int(np.prod(spec.shape))), spec.shape)
    records = np.zeros(ix.size, dtype=OCCUPANCY_POINT_DTYPE)
    records["x"], records["y"], records["z"] = spec.voxel_center(ix, iy, iz)
    records.setflags(write=False)
    return records


def _packed_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) uint32 0x00RRGGBB (the PCL/RViz rgb layout)."""
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


CLASS_RGB_PACKED: np.ndarray = _packed_rgb(CLASS_PALETTE)


def occupied_points(semantic: np.ndarray, panoptic: np.ndarray | None = None, spec: GridSpec = OCC_GRID) -> np.ndarray:
    """Structured array (OCCUPANCY_POINT_DTYPE) with one record per non-free voxel centre, in [ix,iy,iz] C order.

    Colour: class colour, or instance colour for voxels with an instance id when `panoptic` is given.
    """
    labels = check_labels(semantic, "semantic grid", spec.shape).reshape(-1)
    occupied = np.flatnonzero(labels != FREE_INDEX)
    pts = np.take(_voxel_records(spec), occupied)  # np.take: several times faster than [] on structured rows
    labels = labels[occupied]
    # The 20-byte record as five little-endian uint32 words: x, y, z, rgb, label | instance << 16.
    words = pts.view("<u4").reshape(-1, 5)
    if panoptic is None:
        words[:, 3] = np.take(CLASS_RGB_PACKED, labels)  # np.take: far faster than [] with small-int indices
        words[:, 4] = labels
        return pts
    ids = check_panoptic(panoptic, "panoptic grid", spec.shape).reshape(-1)[occupied]
    top = int(ids.max()) if ids.size else 0
    if top > np.iinfo(np.uint16).max:
        raise BadInput(f"panoptic grid: instance id {top} does not fit the uint16 point field")
    # One colour table over all values present: < 18 a class (an official-mode erased voxel is 0), >= 18 an
    # instance (at most a few hundred ids to colour), then one gather.
    colour = np.zeros(max(top + 1, FIRST_INSTANCE_ID), dtype=np.uint32)
    colour[:FIRST_INSTANCE_ID] = CLASS_RGB_PACKED[:FIRST_INSTANCE_ID]
    colour[FIRST_INSTANCE_ID:] = _packed_rgb(instance_colors(np.arange(FIRST_INSTANCE_ID, top + 1)))
    words[:, 3] = np.take(colour, ids)
    instance = np.where(ids >= FIRST_INSTANCE_ID, ids, 0).astype(np.uint32)
    words[:, 4] = (instance << 16) | labels
    return pts


def pointcloud2_msg(points: np.ndarray, header: Any) -> Any:
    """sensor_msgs/PointCloud2 (unordered, height 1) from a OCCUPANCY_POINT_DTYPE structured array."""
    from sensor_msgs.msg import PointCloud2

    return codec.build_rclpy(PointCloud2, codec.pointcloud_fields(points, header, OCCUPANCY_POINT_DTYPE))


def pointcloud2_to_points(msg: Any) -> np.ndarray:
    """Inverse of `pointcloud2_msg` (for tests and tools)."""
    return codec.points_from_msg(msg, OCCUPANCY_POINT_DTYPE, "PointCloud2 (occupancy points)")


# --------------------------------------------------------------------------------------------------------------
# Markers
# --------------------------------------------------------------------------------------------------------------


def marker_voxels(semantic: np.ndarray, max_markers: int, spec: GridSpec = OCC_GRID) -> dict[int, np.ndarray]:
    """{class index: (K,3) float64 voxel centres} of non-free voxels, at most `max_markers` in total.

    When there are more, an even stride over all occupied voxels keeps every class represented in proportion.
    """
    check_labels(semantic, "semantic grid", spec.shape)
    ix, iy, iz = np.nonzero(semantic != FREE_INDEX)
    n = ix.size
    if max_markers <= 0 or n == 0:
        return {}
    if n > max_markers:
        keep = np.linspace(0, n - 1, max_markers).astype(np.intp)
        ix, iy, iz = ix[keep], iy[keep], iz[keep]
    labels = semantic[ix, iy, iz]
    centres = np.stack(spec.voxel_center(ix, iy, iz), axis=1)
    return {int(c): centres[labels == c] for c in np.unique(labels)}


def marker_array_msg(semantic: np.ndarray, header: Any, max_markers: int, ns: str = "occupancy") -> Any:
    """visualization_msgs/MarkerArray: a DELETEALL marker, then one CUBE_LIST per present class (capped)."""
    from geometry_msgs.msg import Point
    from std_msgs.msg import ColorRGBA
    from visualization_msgs.msg import Marker, MarkerArray

    out = MarkerArray()
    clear = Marker()
    clear.header = header
    clear.ns = ns
    clear.action = Marker.DELETEALL
    markers = [clear]
    size = float(OCC_GRID.voxel_size)
    for cls, centres in marker_voxels(semantic, max_markers).items():
        m = Marker()
        m.header = header
        m.ns = ns
        m.id = cls
        m.type = Marker.CUBE_LIST
        m.action = Marker.ADD
        m.pose.orientation.w = 1.0
        m.scale.x = m.scale.y = m.scale.z = size
        r, g, b = (float(v) / 255.0 for v in CLASS_PALETTE[cls])
        m.color = ColorRGBA(r=r, g=g, b=b, a=1.0)
        m.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in centres.tolist()]
        markers.append(m)
    out.markers = markers
    return out


# --------------------------------------------------------------------------------------------------------------
# Camera inputs
# --------------------------------------------------------------------------------------------------------------


def camera_info_intrinsics(k: Any, width: int, height: int, topic: str = "camera_info") -> np.ndarray:
    """CameraInfo.k (9 numbers, row-major) -> validated (3,3) float64 K; BadInput names the topic and value."""
    K = np.asarray(list(k), dtype=np.float64)
    if K.size != 9:
        raise BadInput(f"{topic}: k has {K.size} values, expected 9")
    K = K.reshape(3, 3)
    if not np.any(K):
        raise BadInput(f"{topic}: K is all zeros (uncalibrated camera)")
    try:
        check_intrinsics(K)
    except ValueError as exc:
        raise BadInput(f"{topic}: {exc}") from exc
    if width <= 0 or height <= 0:
        raise BadInput(f"{topic}: image size {width}x{height} is not positive")
    return K


def check_image_size(topic: str, width: int, height: int, info_wh: tuple[int, int]) -> None:
    if (width, height) != tuple(info_wh):
        raise BadInput(f"{topic}: image is {width}x{height} but its CameraInfo says {info_wh[0]}x{info_wh[1]}")


RAW_ENCODINGS = ("rgb8", "bgr8")


def image_to_rgb(msg: Any, topic: str = "image") -> np.ndarray:
    """sensor_msgs/Image rgb8/bgr8 -> HxWx3 uint8 RGB view of msg.data (no copy; bgr8 is a reversed-channel view)."""
    if msg.encoding not in RAW_ENCODINGS:
        raise BadInput(f"{topic}: encoding {msg.encoding!r} is not supported (use {' or '.join(RAW_ENCODINGS)})")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise BadInput(f"{topic}: image size {w}x{h} is not positive")
    if step < 3 * w:
        raise BadInput(f"{topic}: step {step} is smaller than 3*width = {3 * w}")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size < step * h:
        raise BadInput(f"{topic}: data has {data.size} bytes, expected step*height = {step * h}")
    img = data[: step * h].reshape(h, step)[:, : 3 * w].reshape(h, w, 3)
    return img[..., ::-1] if msg.encoding == "bgr8" else img


def compressed_jpeg_bytes(msg: Any, topic: str = "image") -> bytes:
    """sensor_msgs/CompressedImage -> JPEG bytes; BadInput for non-JPEG formats or empty data."""
    fmt = (msg.format or "").lower()
    if fmt and "jpeg" not in fmt and "jpg" not in fmt:
        raise BadInput(f"{topic}: format {msg.format!r} is not JPEG")
    data = msg.data
    raw = data.tobytes() if hasattr(data, "tobytes") else bytes(data)
    if len(raw) < 4 or raw[:2] != b"\xff\xd8":
        raise BadInput(f"{topic}: data ({len(raw)} bytes) is not a JPEG stream (no SOI marker)")
    return raw


def image_inputs(msgs: list[Any], topics: list[str], compressed: bool) -> tuple[list, list[tuple[int, int]]]:
    """A camera set's images as pipeline inputs (JPEG bytes, or RGB views of raw images) and their (width, height)
    (JPEG: from the header, without decoding); BadInput naming the topic of the first bad one."""
    inputs, sizes = [], []
    for msg, topic in zip(msgs, topics):
        if compressed:
            data = compressed_jpeg_bytes(msg, topic)
            sizes.append(jpeg_size(data, topic))
            inputs.append(data)
        else:
            inputs.append(image_to_rgb(msg, topic))
            sizes.append((int(msg.width), int(msg.height)))
    return inputs, sizes


def run_on_jpegs(run, jpegs: list[bytes], topics: list[str]):
    """``run(jpegs)``; when it fails, BadInput naming the first JPEG that does not decode (else the error itself)."""
    try:
        return run(jpegs)
    except Exception as exc:
        corrupt = find_corrupt_jpeg(jpegs, topics)
        if corrupt is None:
            raise
        raise corrupt from exc


def find_corrupt_jpeg(jpegs: list[bytes], topics: list[str]) -> BadInput | None:
    """BadInput naming the first of `jpegs` (received on `topics`) that does not decode, or None."""
    import simplejpeg

    for topic, data in zip(topics, jpegs):
        try:
            simplejpeg.decode_jpeg(data, colorspace="RGB")
        except (ValueError, RuntimeError) as exc:
            return BadInput(f"{topic}: corrupt JPEG ({exc})")
    return None


def jpeg_size(data: bytes, topic: str = "image") -> tuple[int, int]:
    """(width, height) from the JPEG header (preprocess.jpeg_size); BadInput for a corrupt header."""
    try:
        h, w = jpeg_hw(data)
    except (ValueError, RuntimeError, OSError) as exc:
        raise BadInput(f"{topic}: corrupt JPEG header ({exc})") from exc
    return w, h


# --------------------------------------------------------------------------------------------------------------
# Timing and diagnostics
# --------------------------------------------------------------------------------------------------------------

TIMING_STAGES = ("decode", "preprocess", "inference", "postprocess")  # OccupancyResult.timings_ms keys


def timing_msg(header: Any, backend: str, timings_ms: dict | None, **fields: float) -> Any:
    """flashocc_ros/InferenceTiming: the pipeline's stage times (`<stage>_ms`) and the node's `fields` (publish_ms,
    total_ms, latency_ms, sync_spread_ms and counters, by field name)."""
    from flashocc_ros.msg import InferenceTiming

    msg = InferenceTiming(header=header, backend=backend)
    timings_ms = timings_ms or {}
    for stage in TIMING_STAGES:
        setattr(msg, f"{stage}_ms", float(timings_ms.get(stage, 0.0)))
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def diagnostics_msg(report: Any, name: str, hardware_id: str, stamp: Any) -> Any:
    """diagnostic_msgs/DiagnosticArray with one DiagnosticStatus from a `health.HealthReport`."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    status = DiagnosticStatus(
        level=bytes([report.level]),
        name=name,
        message=report.message,
        hardware_id=hardware_id,
        values=[KeyValue(key=k, value=v) for k, v in report.values],
    )
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = stamp
    return msg
