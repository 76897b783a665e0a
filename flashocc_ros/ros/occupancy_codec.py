"""The occupancy message codec: the field layout of SemanticOccupancy, PanopticOccupancy and the PointCloud2 clouds,
written once, for both message flavours (rclpy messages on the node, rosbags dataclasses in bag files).

Encoding goes through a plain field dict that mirrors the message (keys = field names; nested messages are dicts,
sequences of messages lists of dicts, numeric sequences numpy arrays, a header the caller's ready header message).
Two thin adapters turn it into a message: ``build_rclpy`` / ``fill_rclpy`` (rclpy messages, each field set once;
bulk fields as array.array, never numpy, see ENVIRONMENT.md) and ``build_rosbags`` (the typestore's dataclasses).
The decoders (``occupancy_from_msg``, ``panoptic_from_msg``, ``points_from_msg``) read either flavour.
No rclpy or rosbags import: message classes come from the caller (rosbags) or from the message itself (rclpy).
"""

from __future__ import annotations

import array
import functools
import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from flashocc_ros.config import CLASS_NAMES, FREE_INDEX, OCC_GRID, GridSpec
from flashocc_ros.grids import check_labels, check_mask, check_panoptic
from flashocc_ros.stamps import stamp_to_ns


class BadInput(ValueError):
    """An input message cannot be used; the message says which field and value."""


# --------------------------------------------------------------------------------------------------------------
# Layout: arrays -> plain field dicts
# --------------------------------------------------------------------------------------------------------------


def semantic_fields(
    semantic: np.ndarray,
    header: Any,
    source: str,
    spec: GridSpec = OCC_GRID,
    *,
    mask_camera: np.ndarray | None = None,
    mask_lidar: np.ndarray | None = None,
    what: str = "semantic grid",
) -> dict:
    """SemanticOccupancy fields of a (X, Y, Z) uint8 [ix, iy, iz] grid: labels[(ix * size_y + iy) * size_z + iz];
    an absent mask is an empty field. ``what`` names the grid in errors."""
    labels = check_labels(semantic, what, spec.shape)
    masks = {}
    for name, mask in (("mask_camera", mask_camera), ("mask_lidar", mask_lidar)):
        masks[name] = np.zeros(0, np.uint8) if mask is None else check_mask(mask, name, spec.shape).astype(np.uint8)
    v = float(spec.voxel_size)
    return {
        "header": header,
        "origin": dict(zip("xyz", (float(c) for c in spec.lower))),
        "voxel_size": {"x": v, "y": v, "z": v},
        "size_x": int(spec.shape[0]),
        "size_y": int(spec.shape[1]),
        "size_z": int(spec.shape[2]),
        "class_names": list(CLASS_NAMES),
        "free_index": FREE_INDEX,
        "labels": np.ascontiguousarray(labels, dtype=np.uint8).ravel(),
        "mask_camera": masks["mask_camera"].ravel(),
        "mask_lidar": masks["mask_lidar"].ravel(),
        "source": source,
    }


def instance_fields(instances: Any) -> list[dict]:
    """OccupancyInstance fields of an InstanceTable (columns id, occ_class, center_xyz, score, voxel_count)."""
    if instances is None:
        return []
    ids = np.asarray(instances.id).reshape(-1)
    classes = np.asarray(instances.occ_class).reshape(-1)
    centers = np.asarray(instances.center_xyz, dtype=np.float64).reshape(-1, 3)
    scores = np.asarray(instances.score, dtype=np.float64).reshape(-1)
    counts = np.asarray(instances.voxel_count).reshape(-1)
    return [
        {
            "id": int(ids[k]),
            "class_index": int(classes[k]),
            "center": dict(zip("xyz", (float(c) for c in centers[k]))),
            "score": float(scores[k]),
            "voxel_count": int(counts[k]),
        }
        for k in range(ids.size)
    ]


def panoptic_fields(
    semantic: np.ndarray,
    panoptic: np.ndarray,
    instances: Any,
    header: Any,
    source: str,
    mode: str,
    spec: GridSpec = OCC_GRID,
) -> dict:
    """PanopticOccupancy fields: the semantic grid, the panoptic ids as uint16 (same layout) and the instances."""
    pano = check_panoptic(panoptic, "panoptic grid", spec.shape)  # shape, integer dtype, no negative id
    semantic_part = semantic_fields(semantic, header, source, spec)
    if pano.size and int(pano.max()) > 0xFFFF:
        raise ValueError(f"panoptic ids must lie in [0, 65535], got [{int(pano.min())}, {int(pano.max())}]")
    return {
        "semantic": semantic_part,
        "mode": mode,
        "panoptic": np.ascontiguousarray(pano, dtype=np.uint16).ravel(),
        "instances": instance_fields(instances),
    }


# sensor_msgs/PointField datatypes by numpy type; packed colours are uint32 bits declared FLOAT32 (PCL / RViz).
POINT_FIELD_DATATYPES = {
    "<i1": 1, "|i1": 1, "<u1": 2, "|u1": 2, "<i2": 3, "<u2": 4, "<i4": 5, "<u4": 6, "<f4": 7, "<f8": 8,
}  # fmt: skip
PACKED_COLOUR_FIELDS = ("rgb", "rgba")


def point_fields(dtype: np.dtype) -> list[dict]:
    """PointField entries (name, offset, datatype, count 1) of a little-endian structured point dtype."""
    out = []
    for name in dtype.names:
        kind = "<f4" if name in PACKED_COLOUR_FIELDS else dtype[name].str
        datatype = POINT_FIELD_DATATYPES.get(kind)
        if datatype is None:
            raise ValueError(f"point field {name!r}: numpy type {kind} has no PointField datatype")
        out.append({"name": name, "offset": int(dtype.fields[name][1]), "datatype": datatype, "count": 1})
    return out


def pointcloud_fields(records: np.ndarray, header: Any, dtype: np.dtype) -> dict:
    """PointCloud2 fields (unordered, height 1, little-endian, dense) of structured ``records`` of ``dtype``."""
    records = np.ascontiguousarray(records, dtype=dtype).reshape(-1)
    return {
        "header": header,
        "height": 1,
        "width": int(records.size),
        "fields": point_fields(dtype),
        "is_bigendian": False,
        "point_step": dtype.itemsize,
        "row_step": dtype.itemsize * int(records.size),
        "data": records.view(np.uint8).reshape(-1),
        "is_dense": True,
    }


# --------------------------------------------------------------------------------------------------------------
# Adapters: field dict -> message
# --------------------------------------------------------------------------------------------------------------

_ARRAY_TYPECODES = {np.dtype(np.uint8): "B", np.dtype(np.uint16): "H", np.dtype(np.float32): "f"}


def _rclpy_array(value: np.ndarray) -> array.array:
    """A numeric sequence as rclpy takes it without conversion: an array.array filled straight from the numpy
    buffer (one copy)."""
    buf = array.array(_ARRAY_TYPECODES[value.dtype])
    buf.frombytes(np.ascontiguousarray(value).reshape(-1).view(np.uint8))
    return buf


@functools.cache
def _rclpy_field_class(cls: type, name: str) -> type:
    """The message class of field ``name`` of rclpy message class ``cls`` (of its elements, for a sequence)."""
    slot = cls.SLOT_TYPES[list(cls.__slots__).index(f"_{name}")]
    t = getattr(slot, "value_type", slot)
    return getattr(importlib.import_module(".".join(t.namespaces)), t.name)


def _rclpy_value(cls: type, name: str, value: Any) -> Any:
    if isinstance(value, dict):
        return build_rclpy(_rclpy_field_class(cls, name), value)
    if isinstance(value, np.ndarray):
        return _rclpy_array(value)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return _rclpy_messages(_rclpy_field_class(cls, name), value)
    return value


def _is_plain(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def _rclpy_messages(element: type, items: list[dict]) -> list:
    """A sequence of messages. Items of plain fields and one level of nested plain messages (as instances with
    their centre) take a direct path: the per-field dispatch of ``build_rclpy`` would cost several times more."""
    first = items[0]
    nested = {k: v for k, v in first.items() if isinstance(v, dict)}
    if not all(_is_plain(v) for k, v in first.items() if k not in nested) or not all(
        _is_plain(x) for v in nested.values() for x in v.values()
    ):
        return [build_rclpy(element, item) for item in items]
    classes = [(k, _rclpy_field_class(element, k)) for k in nested]
    out = []
    for item in items:
        kwargs = dict(item)
        for k, sub in classes:
            kwargs[k] = sub(**kwargs[k])
        out.append(element(**kwargs))
    return out


def build_rclpy(cls: type, fields: dict) -> Any:
    """An rclpy message of class ``cls`` with ``fields`` (each field set once, through the constructor)."""
    return cls(**{name: _rclpy_value(cls, name, value) for name, value in fields.items()})


def fill_rclpy(msg: Any, fields: dict) -> Any:
    """Set ``fields`` on the existing rclpy message ``msg`` (nested messages are built and assigned)."""
    cls = type(msg)
    for name, value in fields.items():
        setattr(msg, name, _rclpy_value(cls, name, value))
    return msg


def build_rosbags(typestore: Any, msgtype: str, fields: dict) -> Any:
    """The rosbags dataclass ``msgtype`` of ``typestore`` with ``fields`` (nested messages built recursively)."""
    _, defs = typestore.fielddefs[msgtype]
    kwargs = {}
    for name, (kind, sub) in defs:
        value = fields[name]
        if kind.name == "NAME" and isinstance(value, dict):
            value = build_rosbags(typestore, sub, value)
        elif kind.name == "SEQUENCE" and sub[0][0].name == "NAME":
            value = [build_rosbags(typestore, sub[0][1], v) if isinstance(v, dict) else v for v in value]
        kwargs[name] = value
    return typestore.types[msgtype](**kwargs)


# --------------------------------------------------------------------------------------------------------------
# Decoders (either flavour)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OccupancyGrid:
    """A SemanticOccupancy message as numpy: labels and masks (200, 200, 16) uint8 [ix, iy, iz]."""

    stamp_ns: int
    frame_id: str
    labels: np.ndarray
    mask_camera: np.ndarray | None
    mask_lidar: np.ndarray | None
    source: str


def _uint8_field(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value.astype(np.uint8, copy=False)
    return np.frombuffer(bytes(value), np.uint8)


def occupancy_from_msg(msg: Any, grid: GridSpec = OCC_GRID) -> OccupancyGrid:
    """SemanticOccupancy (or the `semantic` part of a PanopticOccupancy) -> OccupancyGrid; checks the layout."""
    shape = (int(msg.size_x), int(msg.size_y), int(msg.size_z))
    if shape != tuple(grid.shape):
        raise BadInput(f"SemanticOccupancy size {shape} does not match the grid {grid.shape}")
    origin = (msg.origin.x, msg.origin.y, msg.origin.z)
    if not np.allclose(origin, grid.lower) or not np.isclose(msg.voxel_size.x, grid.voxel_size):
        raise BadInput(f"SemanticOccupancy origin {origin} / voxel {msg.voxel_size.x} differ from {grid}")
    n = shape[0] * shape[1] * shape[2]
    labels = _uint8_field(msg.labels)
    if labels.size != n:
        raise BadInput(f"SemanticOccupancy.labels has {labels.size} entries, expected {n}")
    masks = []
    for name in ("mask_camera", "mask_lidar"):
        mask = _uint8_field(getattr(msg, name))
        if mask.size not in (0, n):
            raise BadInput(f"SemanticOccupancy.{name} has {mask.size} entries, expected 0 or {n}")
        masks.append(mask.reshape(shape) if mask.size else None)
    header = msg.header
    return OccupancyGrid(stamp_to_ns(header), str(header.frame_id), labels.reshape(shape), *masks, str(msg.source))


def panoptic_from_msg(msg: Any, grid: GridSpec = OCC_GRID) -> tuple[OccupancyGrid, np.ndarray]:
    """PanopticOccupancy -> (semantic OccupancyGrid, panoptic (200, 200, 16) int32)."""
    sem = occupancy_from_msg(msg.semantic, grid)
    pano = msg.panoptic
    pano = pano.astype(np.uint16, copy=False) if isinstance(pano, np.ndarray) else np.asarray(pano, np.uint16)
    if pano.size != sem.labels.size:
        raise BadInput(f"PanopticOccupancy.panoptic has {pano.size} entries, expected {sem.labels.size}")
    return sem, pano.reshape(sem.labels.shape).astype(np.int32)


def points_from_msg(msg: Any, dtype: np.dtype, what: str = "PointCloud2") -> np.ndarray:
    """PointCloud2 -> structured records of ``dtype`` (a copy); the cloud's layout must be ``dtype``'s."""
    names = [f.name for f in msg.fields]
    if int(msg.point_step) != dtype.itemsize or names != list(dtype.names):
        raise BadInput(
            f"{what}: layout {names} with point_step {msg.point_step} is not {list(dtype.names)} with point_step "
            f"{dtype.itemsize}"
        )
    return np.frombuffer(msg.data, dtype=dtype).copy()
