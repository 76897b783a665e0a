"""Checks for occupancy grids that come from outside (files, bags, messages, callers): one set of rules and messages.

Each check returns the grid in its canonical dtype (labels uint8, panoptic ids int32, masks bool) or raises `error`
(default `GridError`; loaders pass their own error type so callers keep catching what they caught) with a message
that starts with `where` (e.g. "labels.npz: key 'pred'") and names the problem. No ROS imports.
"""

from __future__ import annotations

import numpy as np

from flashocc_ros.config import NUM_CLASSES, OCC_GRID


class GridError(ValueError):
    """An occupancy grid has the wrong shape, dtype or values; the message names where it came from."""


def _shaped(array, where: str, shape: tuple[int, ...], error: type[Exception]) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != tuple(shape):
        raise error(f"{where}: shape {array.shape}, expected {tuple(shape)}")
    return array


def check_labels(
    array, where: str, shape: tuple[int, ...] = OCC_GRID.shape, error: type[Exception] = GridError
) -> np.ndarray:
    """A class-index grid (integers 0..NUM_CLASSES-1, any integer dtype) as uint8. bool is refused: a bool grid is
    a mask (e.g. ``labels != 17``), and reading it as classes 0/1 would score garbage without a word."""
    array = _shaped(array, where, shape, error)
    if array.dtype == np.bool_:
        raise error(f"{where}: dtype bool, expected integer class indices 0..{NUM_CLASSES - 1} (a bool grid is a mask)")
    if not np.issubdtype(array.dtype, np.integer):
        raise error(f"{where}: dtype {array.dtype}, expected integer class indices")
    if array.size:
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi >= NUM_CLASSES:
            raise error(f"{where}: class index {lo if lo < 0 else hi} is outside 0..{NUM_CLASSES - 1}")
    return array.astype(np.uint8, copy=False)


def check_panoptic(
    array, where: str, shape: tuple[int, ...] = OCC_GRID.shape, error: type[Exception] = GridError
) -> np.ndarray:
    """A panoptic grid (non-negative integers: ids >= 18 are instances, < 18 class indices) as int32."""
    array = _shaped(array, where, shape, error)
    if not np.issubdtype(array.dtype, np.integer):
        raise error(f"{where}: dtype {array.dtype}, expected integer panoptic ids")
    if array.size:
        lo, hi = int(array.min()), int(array.max())
        if lo < 0:
            raise error(f"{where}: negative panoptic id {lo}")
        if hi > np.iinfo(np.int32).max:
            raise error(f"{where}: panoptic id {hi} does not fit int32")
    return array.astype(np.int32, copy=False)


def check_mask(
    array, where: str, shape: tuple[int, ...] = OCC_GRID.shape, error: type[Exception] = GridError
) -> np.ndarray:
    """A visibility mask (0/1 or bool) as bool."""
    array = _shaped(array, where, shape, error)
    if array.size and array.dtype != np.bool_:
        values = np.unique(array)
        if not np.isin(values, (0, 1)).all():
            raise error(f"{where}: mask values must be 0/1, found {values[:5].tolist()}")
    return array.astype(bool, copy=False)
