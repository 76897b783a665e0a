"""Colours for occupancy grids: the package's single class colour map and stable per-instance colours.

Class colours come from `config.CLASS_COLORS` (the Occ3D palette). Instance colours are a pure function of the
instance id (a fixed integer hash to a hue), so an instance keeps its colour across frames, files and runs, no
matter which other instances are present.
"""

from __future__ import annotations

import colorsys

import numpy as np

from flashocc_ros.config import CLASS_COLORS, FIRST_INSTANCE_ID, FREE_INDEX, NUM_CLASSES

# (18, 3) uint8 RGB, row = class index.
CLASS_PALETTE: np.ndarray = np.asarray(CLASS_COLORS, dtype=np.uint8)
CLASS_PALETTE.setflags(write=False)

# Colour of cells/pixels with nothing in them (background of the pictures).
BACKGROUND_RGB: tuple[int, int, int] = (255, 255, 255)
# Ego vehicle marker.
EGO_RGB: tuple[int, int, int] = (40, 40, 40)


def class_colors(labels: np.ndarray) -> np.ndarray:
    """Class index array (any shape) -> RGB uint8 array of shape labels.shape + (3,).

    Raises ValueError naming the first bad value when a label is outside 0..NUM_CLASSES-1.
    """
    labels = np.asarray(labels)
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= NUM_CLASSES:
            bad = lo if lo < 0 else hi
            raise ValueError(f"class index {bad} is outside 0..{NUM_CLASSES - 1}")
    return CLASS_PALETTE[labels.astype(np.intp)]


def _mix32(values: np.ndarray) -> np.ndarray:
    """A fixed 32-bit integer hash (lowbias32 by C. Wellons), elementwise on uint64 arrays; stable across runs."""
    x = values.astype(np.uint64) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    return x


def _hashed_rgb(ids: np.ndarray) -> np.ndarray:
    """(N,) non-negative ids -> (N, 3) uint8: hue from a hash of the id; saturation and value from two further hash
    bits, kept in a range that stays readable on white and distinct from black."""
    h = _mix32(ids)
    hue = (h & np.uint64(0xFFFF)).astype(np.float64) / 65536.0
    sat = 0.55 + 0.4 * ((h >> np.uint64(16)) & np.uint64(0xFF)).astype(np.float64) / 255.0
    val = 0.7 + 0.3 * ((h >> np.uint64(24)) & np.uint64(0xFF)).astype(np.float64) / 255.0
    rgb = np.array([colorsys.hsv_to_rgb(a, b, c) for a, b, c in zip(hue, sat, val)], dtype=np.float64)
    return np.round(rgb.reshape(-1, 3) * 255.0).astype(np.uint8)


# Ids below this bound (the uint16 ids of the messages) are coloured through a cached table, grown in powers of two
# as larger ids appear: one gather per call instead of sorting the ids (this runs for every published point cloud).
INSTANCE_TABLE_LIMIT = 1 << 16
_instance_table: np.ndarray = np.zeros((0, 3), dtype=np.uint8)


def _instance_table_upto(max_id: int) -> np.ndarray:
    global _instance_table
    table = _instance_table  # one read: a concurrent grow replaces the whole array, never mutates it
    if max_id >= table.shape[0]:
        size = max(1024, 1 << int(max_id).bit_length())
        table = _hashed_rgb(np.arange(size, dtype=np.uint64))
        table.setflags(write=False)
        _instance_table = table
    return table


def instance_colors(ids: np.ndarray) -> np.ndarray:
    """Instance ids (any shape, >= 0) -> RGB uint8 of shape ids.shape + (3,), a pure function of each id."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return np.zeros(ids.shape + (3,), dtype=np.uint8)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0:
        raise ValueError(f"instance id {lo} is negative")
    if hi < INSTANCE_TABLE_LIMIT:
        return _instance_table_upto(hi)[ids.astype(np.intp, copy=False)]
    uniq, inverse = np.unique(ids.reshape(-1), return_inverse=True)
    return _hashed_rgb(uniq)[inverse].reshape(ids.shape + (3,))


def panoptic_colors(panoptic: np.ndarray) -> np.ndarray:
    """Panoptic grid -> RGB uint8: values >= FIRST_INSTANCE_ID get their instance colour, smaller values (stuff,
    free, things without an instance) their class colour."""
    panoptic = np.asarray(panoptic)
    out = np.empty(panoptic.shape + (3,), dtype=np.uint8)
    is_inst = panoptic >= FIRST_INSTANCE_ID
    if (~is_inst).any():
        out[~is_inst] = class_colors(panoptic[~is_inst])
    if is_inst.any():
        out[is_inst] = instance_colors(panoptic[is_inst])
    return out


def legend_classes(*grids: np.ndarray, include_free: bool = False) -> list[int]:
    """Sorted class indices present in any of the grids (free left out unless asked for)."""
    present: set[int] = set()
    for g in grids:
        if g is not None:
            present.update(int(v) for v in np.unique(np.asarray(g)))
    if not include_free:
        present.discard(FREE_INDEX)
    return sorted(c for c in present if 0 <= c < NUM_CLASSES)
