"""The viewer's data preparation and key handling, without opening a window."""

import importlib.util

import numpy as np
import pytest

from flashocc_ros.config import CLASS_COLORS, FREE_INDEX, OCC_GRID
from flashocc_ros.viz.colors import EGO_RGB, instance_colors
from flashocc_ros.viz.loaders import OccupancyFrame
from flashocc_ros.viz.raster import EGO_BOX_MAX, EGO_BOX_MIN
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


class RecordingVisualizer:
    """Stands in for Open3D's VisualizerWithKeyCallback: records what the session adds, removes and closes."""

    def __init__(self):
        self.shown = []
        self.calls = []

    def add_geometry(self, geometry, reset_bounding_box=True):
        self.calls.append(("add", reset_bounding_box))
        self.shown.append(geometry)
        return True

    def remove_geometry(self, geometry, reset_bounding_box=True):
        self.calls.append(("remove", reset_bounding_box))
        self.shown.remove(geometry)
        return True

    def close(self):
        self.calls.append(("close", None))


def stepping_pairs():
    b = frame(name="b")
    b.semantic[5, 5, 5] = 14
    return [(frame(name="a", panoptic=True), frame("ground_truth", "a", mask=True)), (b, None)]


def drive_session(build, capsys):
    """Keys through two frames; returns [(key, what is on screen after it)]."""
    from flashocc_ros.viz.viewer import ViewerSession

    vis = RecordingVisualizer()
    session = ViewerSession(stepping_pairs(), vis, build=build)
    session.show(first=True)
    seen = [("start", vis.shown[-1], session.title)]
    redraws = []
    for key in ("M", "C", "G", "N", "N", "P", "Q"):
        redraws.append(session.on_key(key))
        seen.append((key, vis.shown[-1], session.title))
    assert redraws == [True, True, True, True, False, True, False]  # N on the last frame and Q change nothing
    assert len(vis.shown) == 1  # each redraw replaced the voxels
    assert vis.calls[0] == ("add", True) and vis.calls[-1] == ("close", None)
    assert all(reset is False for what, reset in vis.calls[1:-1])  # stepping keeps the view point
    assert "[1/2] a - prediction" in capsys.readouterr().out
    return seen


def test_session_steps_through_frames_and_options(capsys):
    seen = drive_session(lambda geometry: geometry, capsys)  # the prepared voxels themselves, no Open3D
    assert [len(geo) for _, geo, _ in seen] == [3, 2, 2, 2, 4, 4, 2, 2]
    assert seen[1][1].masked  # M: prediction masked by its ground truth's mask
    assert seen[2][1].color_mode == "instance" and "colour: instance" in seen[2][2]
    assert "ground truth" in seen[3][2]
    assert seen[4][2].startswith("[2/2] b - prediction")  # b has no ground truth: the prediction is shown


@pytest.mark.skipif(not HAS_OPEN3D, reason="open3d not installed (optional `view` extra)")
def test_session_with_real_open3d_voxel_grids(capsys):
    import open3d as o3d

    seen = drive_session(None, capsys)  # default build: Open3D VoxelGrid
    assert all(isinstance(geo, o3d.geometry.VoxelGrid) for _, geo, _ in seen)
    assert [len(geo.get_voxels()) for _, geo, _ in seen] == [3, 2, 2, 2, 4, 4, 2, 2]
    indices = {tuple(v.grid_index) for v in seen[4][1].get_voxels()}
    assert indices == {(0, 0, 0), (199, 199, 15), (100, 50, 3), (5, 5, 5)}


@pytest.mark.skipif(not HAS_OPEN3D, reason="open3d not installed (optional `view` extra)")
def test_open3d_voxel_grid_positions_and_colours():
    from flashocc_ros.viz.viewer import ego_marker, to_open3d

    geo = prepare_geometry(frame(panoptic=True), color_by="instance")
    grid = to_open3d(geo)
    assert grid.voxel_size == pytest.approx(0.4) and np.allclose(grid.origin, OCC_GRID.lower)
    colours = {tuple(v.grid_index): tuple(np.round(np.asarray(v.color) * 255).astype(int)) for v in grid.get_voxels()}
    assert colours == {
        (0, 0, 0): tuple(instance_colors(np.array([20]))[0]),
        (199, 199, 15): tuple(instance_colors(np.array([21]))[0]),
        (100, 50, 3): CLASS_COLORS[11],
    }
    # Every voxel's Open3D centre is the grid's own voxel centre.
    for v in grid.get_voxels():
        centre = grid.get_voxel_center_coordinate(v.grid_index)
        assert np.allclose(centre, OCC_GRID.voxel_center(*v.grid_index), atol=1e-5)
    assert len(to_open3d(prepare_geometry(frame(kind="prediction"), use_camera_mask=True)).get_voxels()) == 3
    empty = OccupancyFrame(np.full(OCC_GRID.shape, FREE_INDEX, np.uint8), "e", "test")
    assert len(to_open3d(prepare_geometry(empty)).get_voxels()) == 0
    ego = ego_marker()
    assert len(ego.vertices) == 8
    assert np.allclose(ego.get_min_bound(), EGO_BOX_MIN) and np.allclose(ego.get_max_bound(), EGO_BOX_MAX)
    assert tuple(np.round(np.asarray(ego.vertex_colors)[0] * 255).astype(int)) == EGO_RGB


@pytest.mark.skipif(not HAS_OPEN3D, reason="open3d not installed (optional `view` extra)")
def test_open3d_visualizer_accepts_the_calls_the_viewer_makes():
    """No window here: Open3D refuses to add geometry (returns False), but the calls and keywords the viewer uses
    are accepted (a renamed method or keyword raises)."""
    import open3d as o3d

    from flashocc_ros.viz.viewer import GLFW_KEYS, to_open3d

    vis = o3d.visualization.VisualizerWithKeyCallback()
    grid = to_open3d(prepare_geometry(frame()))
    assert vis.add_geometry(grid, reset_bounding_box=False) is False  # no window was created
    assert vis.remove_geometry(grid, reset_bounding_box=False) is False
    for code in GLFW_KEYS.values():
        vis.register_key_callback(code, lambda _vis: False)
    vis.destroy_window()


def test_display_problem():
    from flashocc_ros.viz.viewer import display_problem

    assert "DISPLAY and WAYLAND_DISPLAY are unset" in display_problem({}, "linux")
    assert display_problem({"DISPLAY": ":0"}, "linux") is None
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0"}, "linux") is None
    assert display_problem({}, "darwin") is None and display_problem({}, "win32") is None


@pytest.mark.skipif(not HAS_OPEN3D, reason="open3d not installed (optional `view` extra)")
def test_viewer_without_display_says_so(monkeypatch):
    from flashocc_ros.viz.viewer import run_viewer

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    with pytest.raises(RuntimeError, match="no display"):
        run_viewer([(frame(), None)])


@pytest.mark.skipif(HAS_OPEN3D, reason="open3d is installed")
def test_viewer_without_open3d_says_how_to_install():
    from flashocc_ros.viz.viewer import run_viewer

    with pytest.raises(RuntimeError, match=r"pip install 'flashocc_ros\[view\]'"):
        run_viewer([(frame(), None)])
