"""The viewer's data preparation and key handling, without opening a window."""

import importlib.util

import numpy as np
import pytest

from flashocc_ros.config import CLASS_COLORS, FREE_INDEX, OCC_GRID
from flashocc_ros.viz.colors import instance_colors
from flashocc_ros.viz.loaders import OccupancyFrame
from flashocc_ros.viz.viewer import ViewerState, frame_to_show, prepare_geometry

HAS_OPEN3D = importlib.util.find_spec("open3d") is not None


def frame(kind="prediction", name="tok", panoptic=False, mask=False):
    sem = np.full(OCC_GRID.shape, FREE_INDEX, np.uint8)
    sem[0, 0, 0] = 4
    sem[199, 199, 15] = 4
    sem[100, 50, 3] = 11
    pan = None
    if panoptic:
        pan = sem.astype(np.int32)
        pan[0, 0, 0] = 20
        pan[199, 199, 15] = 21
    m = None
    if mask:
        m = np.zeros(OCC_GRID.shape, bool)
        m[:, :100] = True
    return OccupancyFrame(sem, name, "test", kind=kind, panoptic=pan, mask_camera=m)


def test_geometry_hides_free_and_places_voxel_centres():
    geo = prepare_geometry(frame())
    assert len(geo) == 3 and geo.voxel_size == 0.4 and geo.color_mode == "class"
    centres = {tuple(np.round(c.astype(np.float64), 3).tolist()) for c in geo.centers}
    assert (-39.8, -39.8, -0.8) in centres and (39.8, 39.8, 5.2) in centres and (0.2, -19.8, 0.4) in centres
    by_label = {int(lbl): tuple(np.round(c * 255).astype(int)) for lbl, c in zip(geo.labels, geo.colors)}
    assert by_label == {4: CLASS_COLORS[4], 11: CLASS_COLORS[11]}


def test_geometry_instance_colours_and_fallback():
    geo = prepare_geometry(frame(panoptic=True), color_by="instance")
    assert geo.color_mode == "instance"
    i = int(np.argmin(np.abs(geo.centers - [-39.8, -39.8, -0.8]).sum(axis=1)))
    assert (np.round(geo.colors[i] * 255).astype(int) == instance_colors(np.array([20]))[0]).all()
    j = int(np.argmin(np.abs(geo.centers - [0.2, -19.8, 0.4]).sum(axis=1)))
    assert tuple(np.round(geo.colors[j] * 255).astype(int)) == CLASS_COLORS[11]  # stuff keeps its class colour
    assert prepare_geometry(frame(), color_by="instance").color_mode == "class"  # no panoptic grid
    with pytest.raises(ValueError, match="color_by 'rainbow'"):
        prepare_geometry(frame(), color_by="rainbow")


def test_geometry_camera_mask():
    f = frame(mask=True)
    assert len(prepare_geometry(f)) == 3
    masked = prepare_geometry(f, use_camera_mask=True)
    assert masked.masked and len(masked) == 2  # iy < 100 only
    assert not prepare_geometry(frame(), use_camera_mask=True).masked  # no mask available: unchanged


def test_state_keys():
    s = ViewerState(count=3)
    assert s.press("P") is False and s.index == 0
    assert s.press("n") and s.press("RIGHT") and s.index == 2
    assert s.press("N") is False and s.index == 2
    assert s.press("LEFT") and s.index == 1
    assert s.press("C") and s.color_by == "instance" and s.press("C") and s.color_by == "class"
    assert s.press("M") and s.use_camera_mask
    assert s.press("G") and s.show_ground_truth
    assert s.press("x") is False
    s.press("Q")
    assert s.quit


def test_frame_to_show_borrows_ground_truth_mask():
    pairs = [(frame(name="a"), frame("ground_truth", "a", mask=True)), (frame(name="b"), None)]
    state = ViewerState(2)
    shown, mask, title = frame_to_show(pairs, state)
    assert shown is pairs[0][0] and mask is pairs[0][1].mask_camera and "[1/2] a - prediction" in title
    state.press("G")
    shown, _, title = frame_to_show(pairs, state)
    assert shown is pairs[0][1] and "ground truth" in title
    state.press("N")
    shown, mask, _ = frame_to_show(pairs, state)
    assert shown is pairs[1][0] and mask is None  # no ground truth for b: the prediction is shown


@pytest.mark.skipif(not HAS_OPEN3D, reason="open3d not installed (optional `view` extra)")
def test_open3d_voxel_grid():
    from flashocc_ros.viz.viewer import ego_marker, to_open3d

    grid = to_open3d(prepare_geometry(frame()))
    assert len(grid.get_voxels()) == 3
    assert len(ego_marker().vertices) == 8


@pytest.mark.skipif(HAS_OPEN3D, reason="open3d is installed")
def test_viewer_without_open3d_says_how_to_install():
    from flashocc_ros.viz.viewer import run_viewer

    with pytest.raises(RuntimeError, match=r"pip install 'flashocc_ros\[view\]'"):
        run_viewer([(frame(), None)])
