"""Composed pictures and videos: panel positions, colours, legend, camera mask, renderer choice, atomic writes."""

import importlib.util
import time

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


def test_probe_reports_a_crash_and_is_bounded_in_time():
    crash = (
        "import os, signal, sys\n"
        "sys.stderr.write('\\x1b[1;33m[Open3D WARNING] eglInitialize failed\\x1b[0m\\n')\n"
        "sys.stderr.flush()\n"
        "os.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    assert R.run_probe(code=crash) == (False, "[Open3D WARNING] eglInitialize failed; probe process killed by SIGSEGV")
    assert R.run_probe(code="raise SystemExit(3)") == (False, "probe exit code 3")
    start = time.monotonic()
    assert R.run_probe(code="import time; time.sleep(60)", timeout=1.0) == (False, "probe timed out after 1 s")
    assert time.monotonic() - start < 10


@pytest.fixture
def fresh_probe(monkeypatch):
    """open3d_offscreen_status() recomputed with a fake probe; the module's cached state is restored afterwards."""
    monkeypatch.setattr(R, "_OPEN3D_PROBE", None)
    monkeypatch.setattr(R, "_OPEN3D_ENV", {})
    monkeypatch.setattr(R, "open3d_installed", lambda: True)
    monkeypatch.delenv("EGL_PLATFORM", raising=False)
    monkeypatch.delenv("FLASHOCC_NO_OPEN3D", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    calls = []

    def use(results):
        def fake(env=None, **_):
            calls.append(env or {})
            return results[len(calls) - 1]

        monkeypatch.setattr(R, "run_probe", fake)
        return calls

    return use


def test_no_egl_falls_back_to_the_raster_renderer_and_says_why(fresh_probe):
    why = "eglInitialize failed; probe process killed by SIGSEGV"
    calls = fresh_probe([(False, why), (False, why)])
    used, message = R.choose_renderer("auto")
    assert used == "raster" and calls == [{}, {"EGL_PLATFORM": "surfaceless"}]
    assert message == (
        f"3D view: numpy raster renderer (fallback: open3d off-screen rendering failed here ({why}; "
        f"with EGL_PLATFORM=surfaceless: {why}))"
    )
    assert R.choose_renderer("auto") == (used, message) and len(calls) == 2  # probed once per process
    with pytest.raises(R.RenderError, match="Open3D renderer requested but unavailable: .*eglInitialize failed"):
        R.choose_renderer("open3d")
    with pytest.raises(R.RenderError, match="Open3D renderer unavailable"):  # never crashes the process
        R.view_image("3d", grid_with(4), renderer="open3d")
    image, layout, used, message = R.compose_comparison(grid_with(4), None, renderer="auto")
    assert used == "raster" and "eglInitialize failed" in message and "prediction/3d" in layout.panels


def test_surfaceless_egl_is_tried_and_remembered(fresh_probe):
    calls = fresh_probe([(False, "eglInitialize failed; probe process killed by SIGSEGV"), (True, "")])
    assert R.choose_renderer("auto") == (
        "open3d",
        "3D view: Open3D off-screen renderer (open3d off-screen rendering works with EGL_PLATFORM=surfaceless)",
    )
    assert calls == [{}, {"EGL_PLATFORM": "surfaceless"}] and R._OPEN3D_ENV == {"EGL_PLATFORM": "surfaceless"}


def test_probe_respects_a_chosen_egl_platform(fresh_probe, monkeypatch):
    monkeypatch.setenv("EGL_PLATFORM", "device")
    calls = fresh_probe([(False, "eglInitialize failed")])
    works, why = R.open3d_offscreen_status()
    assert not works and why == "open3d off-screen rendering failed here (eglInitialize failed)" and len(calls) == 1


def test_srgb_to_linear():
    assert R.srgb_to_linear(np.array([0.0, 1.0])).tolist() == [0.0, 1.0]
    assert R.srgb_to_linear(np.array([0.5]))[0] == pytest.approx(0.2140, abs=1e-4)


@pytest.mark.skipif(not HAS_OPEN3D, reason="open3d not installed (optional `view` extra)")
def test_real_open3d_probe_answers():
    works, why = R.open3d_offscreen_status()  # bounded by PROBE_TIMEOUT_S per probe; must not crash this process
    assert why and isinstance(works, bool)


@pytest.mark.skipif(not HAS_OPEN3D, reason="open3d not installed (optional `view` extra)")
def test_open3d_offscreen_matches_raster():
    works, why = R.open3d_offscreen_status()
    if not works:
        pytest.skip(f"open3d installed but off-screen rendering does not work here: {why}")
    grid = grid_with(4)
    grid[:, :, 2] = 11
    image = R.view_image("3d", grid, renderer="open3d")
    raster = R.view_image("3d", grid, renderer="raster")
    assert image.shape == raster.shape == (R.VIEW_H, R.VIEW_W, 3)
    # Same camera, same faces, same colours: only anti-aliased edges differ.
    far = np.abs(image.astype(int) - raster.astype(int)).max(axis=2) > 8
    assert far.mean() < 0.01
    for r, c in ((5, 5), (300, 400), (R.VIEW_H - 5, R.VIEW_W - 5)):  # background, ground plane, background
        assert np.abs(image[r, c].astype(int) - raster[r, c].astype(int)).max() <= 3
    # A second picture in the same process reuses the renderer and shows the new grid only (no ground plane left).
    single = grid_with(7)
    again = R.view_image("3d", single, renderer="open3d", ego=False)
    background = (np.abs(again.astype(int) - np.array(R.PANEL_BACKGROUND)).max(axis=2) <= 3).mean()
    assert 0.99 < background < 1.0
    raster_again = R.view_image("3d", single, renderer="raster", ego=False)
    assert ((np.abs(again.astype(int) - raster_again.astype(int)).max(axis=2) > 8).mean()) < 0.001


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
