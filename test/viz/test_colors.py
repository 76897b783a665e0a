"""Class and instance colours."""

import numpy as np
import pytest

from flashocc_ros.config import CLASS_COLORS, FIRST_INSTANCE_ID, NUM_CLASSES
from flashocc_ros.viz.colors import class_colors, instance_colors, legend_classes, panoptic_colors


def test_class_colors_are_the_config_palette():
    labels = np.arange(NUM_CLASSES).reshape(3, 6)
    rgb = class_colors(labels)
    assert rgb.shape == (3, 6, 3) and rgb.dtype == np.uint8
    assert [tuple(c) for c in rgb.reshape(-1, 3)] == list(CLASS_COLORS)


@pytest.mark.parametrize("bad", [-1, NUM_CLASSES, 255])
def test_class_colors_reject_out_of_range(bad):
    with pytest.raises(ValueError, match=f"class index {bad}"):
        class_colors(np.array([0, bad]))


def test_instance_colour_depends_only_on_the_id():
    alone = instance_colors(np.array([42]))[0]
    among_others = instance_colors(np.array([7, 99, 42, 1000, 42]))
    assert (among_others[2] == alone).all() and (among_others[4] == alone).all()


def test_instance_colours_pinned_literals():
    """The hash is fixed, so an id has the same colour in every run, process and machine."""
    assert instance_colors(np.array([18, 19, 500])).tolist() == [[181, 33, 153], [168, 186, 29], [198, 113, 75]]


def test_instance_colours_are_distinct_and_visible():
    rgb = instance_colors(np.arange(FIRST_INSTANCE_ID, FIRST_INSTANCE_ID + 200)).astype(int)
    assert len({tuple(c) for c in rgb}) == 200
    assert (rgb.max(axis=1) >= 170).all()  # never near black
    assert (rgb.max(axis=1) - rgb.min(axis=1) >= 60).all()  # saturated: not grey/white


def test_panoptic_colours_split_things_and_classes():
    pan = np.array([[0, 4, 17], [18, 25, 18]], dtype=np.int32)
    rgb = panoptic_colors(pan)
    assert (rgb[0] == class_colors(np.array([0, 4, 17]))).all()
    assert (rgb[1, 0] == rgb[1, 2]).all()  # same instance id, same colour
    assert (rgb[1, 0] == instance_colors(np.array([18]))[0]).all()
    assert (rgb[1, 1] == instance_colors(np.array([25]))[0]).all()
    # Relabelling the other instances does not change an instance's colour.
    pan2 = pan.copy()
    pan2[1, 1] = 300
    assert (panoptic_colors(pan2)[1, 0] == rgb[1, 0]).all()


def test_legend_classes_skip_free():
    assert legend_classes(np.array([17, 4, 4, 11]), np.array([0, 17])) == [0, 4, 11]


def test_instance_colour_table_agrees_with_the_hash_beyond_its_limit():
    """Ids below INSTANCE_TABLE_LIMIT come from the cached table, larger ones from the hash of the unique ids: the
    same function either way (checked on ids that straddle the limit and on a 2-D array)."""
    from flashocc_ros.viz.colors import INSTANCE_TABLE_LIMIT, _hashed_rgb

    ids = np.array([[0, 18, 1023, 1024], [4097, INSTANCE_TABLE_LIMIT - 1, INSTANCE_TABLE_LIMIT, 2**31 - 1]])
    rgb = instance_colors(ids)
    assert rgb.shape == (2, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb.reshape(-1, 3), _hashed_rgb(ids.reshape(-1).astype(np.uint64)))
    assert instance_colors(np.zeros((0,), np.int32)).shape == (0, 3)
    with pytest.raises(ValueError, match="instance id -3 is negative"):
        instance_colors(np.array([5, -3]))
