"""The shared occupancy-grid checks (flashocc_ros.grids) used by the loaders, evaluation, bags and messages."""

import numpy as np
import pytest

from flashocc_ros.config import OCC_GRID
from flashocc_ros.grids import GridError, check_labels, check_mask, check_panoptic


class LoaderError(ValueError):
    pass


def test_good_grids_come_back_in_their_canonical_dtypes():
    labels = np.random.default_rng(0).integers(0, 18, OCC_GRID.shape).astype(np.int64)
    out = check_labels(labels, "x")
    assert out.dtype == np.uint8 and np.array_equal(out, labels)
    assert check_panoptic(labels + 18, "x").dtype == np.int32
    mask = check_mask((labels > 8).astype(np.uint8), "x")
    assert mask.dtype == np.bool_ and np.array_equal(mask, labels > 8)
    assert check_mask(labels > 8, "x").dtype == np.bool_


@pytest.mark.parametrize(
    "check, array, message",
    [
        (check_labels, np.zeros((200, 200, 15), np.uint8), r"f\.npz: key 'pred': shape \(200, 200, 15\), expected"),
        (check_labels, np.zeros(OCC_GRID.shape, np.float32), r"dtype float32, expected integer class indices"),
        (check_labels, np.zeros(OCC_GRID.shape, bool), r"dtype bool, expected integer class indices 0\.\.17"),
        (check_labels, np.full(OCC_GRID.shape, 18, np.int32), r"class index 18 is outside 0\.\.17"),
        (check_labels, np.full(OCC_GRID.shape, -1, np.int32), r"class index -1 is outside 0\.\.17"),
        (check_panoptic, np.full(OCC_GRID.shape, -3, np.int64), r"negative panoptic id -3"),
        (check_panoptic, np.full(OCC_GRID.shape, 2**40, np.int64), r"panoptic id 1099511627776 does not fit int32"),
        (check_panoptic, np.zeros(OCC_GRID.shape, np.float64), r"dtype float64, expected integer panoptic ids"),
        (check_mask, np.full(OCC_GRID.shape, 2, np.uint8), r"mask values must be 0/1, found \[2\]"),
    ],
)
def test_bad_grids_raise_the_callers_error_naming_where_and_what(check, array, message):
    with pytest.raises(GridError, match=message):
        check(array, "f.npz: key 'pred'")
    with pytest.raises(LoaderError, match=message):
        check(array, "f.npz: key 'pred'", error=LoaderError)
