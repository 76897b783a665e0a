"""Composed pictures and videos: panel positions, colours, legend, camera mask, renderer choice, atomic writes."""

import importlib.util

import numpy as np
import pytest
from PIL import Image

from flashocc_ros.config import CLASS_COLORS, FREE_INDEX, OCC_GRID
from flashocc_ros.viz import render as R
from flashocc_ros.viz.colors import instance_colors
from flashocc_ros.viz.raster import bev_pixel, height_shade

HAS_OPEN3D = importlib.util.find_spec("open3d") is not None


def grid_with(value, at=(150, 60, 5)):
    g = np.full(OCC_GRID.shape, FREE_INDEX, np.uint8)
    g[at] = value
    return g


def shaded(cls, iz):
    return tuple(int(round(c * height_shade(iz, 16))) for c in CLASS_COLORS[cls])


def pixel(image, layout, panel, ix, iy):
    x0, y0, _, _ = layout.panels[panel]
    r, c = bev_pixel(ix, iy, R.BEV_SCALE)
    return tuple(int(v) for v in image[y0 + r, x0 + c])


def test_comparison_places_prediction_left_and_ground_truth_right(tmp_path):
    pred, gt = grid_with(4), grid_with(7)
    image, layout, used, message = R.compose_comparison(pred, gt, title="t", views=("bev",), renderer="raster")
    assert used == "none" and message == "no 3D view drawn"  # the bird's-eye view is always the raster one
    assert pixel(image, layout, "prediction/bev", 150, 60) == shaded(4, 5)
    assert pixel(image, layout, "ground_truth/bev", 150, 60) == shaded(7, 5)
    assert layout.panels["prediction/bev"][2] <= layout.panels["ground_truth/bev"][0]
    # Written PNG = the composed image.
    result = R.render_comparison(pred, gt, tmp_path / "cmp.png", title="t", views=("bev",), renderer="raster")
    assert (np.asarray(Image.open(result.path)) == image).all()


def test_legend_lists_present_classes(tmp_path):
    pred, gt = grid_with(4), grid_with(7)
    gt[10, 10, 1] = 14
    image, layout, _, _ = R.compose_comparison(pred, gt, views=("bev",), renderer="raster")
    legend = layout.crop(image, "legend").reshape(-1, 3)
    present = {tuple(int(v) for v in c) for c in np.unique(legend, axis=0)}
    for cls in (4, 7, 14):
        assert CLASS_COLORS[cls] in present
    assert CLASS_COLORS[11] not in present  # driveable_surface is in neither grid


def test_camera_mask_hides_voxels_outside_it():
    pred = grid_with(4)
    pred[150, 150, 5] = 4  # left side, inside the mask
    mask = np.zeros(OCC_GRID.shape, bool)
    mask[:, 100:] = True
    image, layout, _, _ = R.compose_comparison(pred, pred, mask=mask, views=("bev",), renderer="raster")
    for panel in ("prediction/bev", "ground_truth/bev"):
        assert pixel(image, layout, panel, 150, 60) == R.PANEL_BACKGROUND
        assert pixel(image, layout, panel, 150, 150) == shaded(4, 5)


def test_panoptic_colouring_in_pictures():
    pred = grid_with(4)
    pan = pred.astype(np.int32)
    pan[150, 60, 5] = 33
    image, layout, _, _ = R.compose_comparison(pred, None, views=("bev",), renderer="raster", pred_panoptic=pan)
    expected = tuple(int(round(c * height_shade(5, 16))) for c in instance_colors(np.array([33]))[0])
    assert pixel(image, layout, "prediction/bev", 150, 60) == expected
    assert "ground_truth/bev" not in layout.panels


def test_both_views_and_render_bev_api(tmp_path):
    pred = grid_with(4)
    image, layout, used, _ = R.compose_comparison(pred, pred, renderer="raster")
    x0, y0, x1, y1 = layout.panels["prediction/3d"]
    assert (x1 - x0, y1 - y0) == (R.VIEW_W, R.VIEW_H)
    view = image[y0:y1, x0:x1]
    assert (view != np.array(R.PANEL_BACKGROUND, np.uint8)).any(axis=2).sum() > 10  # voxel + ego drawn
    result = R.render_bev(pred, tmp_path / "bev.png", title="bev")
    assert result.renderer == "none"
    saved = np.asarray(Image.open(result.path))
    assert saved.shape[1] == 2 * R.MARGIN + 600


def test_renderer_choice_is_reported():
    if HAS_OPEN3D:
        pytest.skip("open3d is installed: the fallback path is not taken here")
    used, message = R.choose_renderer("auto")
    assert used == "raster" and "open3d is not installed" in message
    with pytest.raises(R.RenderError, match="Open3D renderer requested but unavailable"):
        R.choose_renderer("open3d")
    with pytest.raises(ValueError, match="renderer 'vulkan'"):
        R.choose_renderer("vulkan")


@pytest.mark.skipif(not HAS_OPEN3D, reason="open3d not installed (optional `view` extra)")
def test_open3d_offscreen_matches_raster_roughly():
    works, why = R.open3d_offscreen_status()
    if not works:
        pytest.skip(f"open3d installed but off-screen rendering does not work here: {why}")
    grid = grid_with(4)
    grid[:, :, 2] = 11
    image = R.view_image("3d", grid, renderer="open3d")
    raster = R.view_image("3d", grid, renderer="raster")
    assert image.shape == raster.shape
    assert (np.abs(image.astype(int) - raster.astype(int)).sum(axis=2) > 60).mean() < 0.1


def test_gif_video_and_atomic_write(tmp_path):
    cams = [np.full((90, 160, 3), 30 * i, np.uint8) for i in range(6)]
    items = [R.VideoItem(grid_with(4), grid_with(7), images=cams, title="f0"), R.VideoItem(grid_with(7), None)]
    result = R.render_video(items, tmp_path / "v.gif", fps=4, views=("bev",), renderer="raster")
    assert result.frames == 2 and result.path.exists()
    import imageio.v3 as iio

    frames = iio.imread(result.path, index=None)
    assert frames.shape[0] == 2 and frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gif"]  # no temporary file left
    with pytest.raises(R.RenderError, match="no frames"):
        R.render_video([], tmp_path / "empty.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gif"]


def test_mp4_video(tmp_path):
    import cv2

    items = [R.VideoItem(grid_with(c)) for c in (4, 7, 11)]
    result = R.render_video(items, tmp_path / "v.mp4", fps=2, views=("bev",), renderer="raster")
    capture = cv2.VideoCapture(str(result.path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == 3
    assert "video:" in result.message


def test_camera_mosaic_layout():
    cams = [np.full((90, 160, 3), (10 * i, 0, 0), np.uint8) for i in range(6)]
    mosaic = R.camera_mosaic(cams, 960)
    assert mosaic.shape == (360, 960, 3)
    # CAM_BACK (index 4) is the middle tile of the lower row; sample away from the name label.
    assert tuple(mosaic[300, 480]) == (40, 0, 0)
    missing = R.camera_mosaic(None, 960)
    assert tuple(missing[300, 480]) == (60, 60, 60)
