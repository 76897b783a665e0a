"""Interactive Open3D voxel viewer (desktop). Open3D is imported only when a window is opened.

Everything the window shows is prepared by pure functions (`prepare_geometry`, `ViewerState`), tested without a
display. Keys: N / Right = next frame, P / Left = previous, C = colour by class / instance, M = camera mask on/off,
G = prediction / ground truth, Q / Esc = quit.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from flashocc_ros.config import FREE_INDEX, OCC_GRID, GridSpec
from flashocc_ros.viz.colors import EGO_RGB, class_colors, panoptic_colors
from flashocc_ros.viz.loaders import OccupancyFrame
from flashocc_ros.viz.raster import EGO_BOX_MAX, EGO_BOX_MIN

COLOR_MODES = ("class", "instance")
OPEN3D_MISSING = "the viewer needs Open3D: pip install 'flashocc_ros[view]' (or pip install open3d)"


@dataclass
class VoxelGeometry:
    """Non-free voxels ready for display: centres (N,3) metres, colours (N,3) in [0,1], class labels (N,)."""

    centers: np.ndarray
    colors: np.ndarray
    labels: np.ndarray
    voxel_size: float
    color_mode: str  # the mode actually used ("instance" falls back to "class" without a panoptic grid)
    masked: bool  # whether the camera mask was applied

    def __len__(self) -> int:
        return len(self.labels)


def prepare_geometry(
    frame: OccupancyFrame,
    *,
    color_by: str = "class",
    use_camera_mask: bool = False,
    mask: np.ndarray | None = None,
    spec: GridSpec = OCC_GRID,
    free_index: int = FREE_INDEX,
) -> VoxelGeometry:
    """Voxels of `frame` to draw: free hidden; optionally only those inside the camera mask (the frame's own
    `mask_camera`, or `mask` when given, e.g. the ground truth's mask for a prediction)."""
    if color_by not in COLOR_MODES:
        raise ValueError(f"color_by {color_by!r} is not one of {', '.join(COLOR_MODES)}")
    semantic = frame.semantic
    keep = semantic != free_index
    masked = False
    if use_camera_mask:
        m = mask if mask is not None else frame.mask_camera
        if m is not None:
            keep &= np.asarray(m).astype(bool)
            masked = True
    ix, iy, iz = np.nonzero(keep)
    labels = semantic[ix, iy, iz]
    mode = "instance" if color_by == "instance" and frame.panoptic is not None else "class"
    if mode == "instance":
        rgb = panoptic_colors(frame.panoptic[ix, iy, iz])
    else:
        rgb = class_colors(labels)
    centers = np.stack(spec.voxel_center(ix, iy, iz), axis=1).astype(np.float32).reshape(-1, 3)
    return VoxelGeometry(centers, rgb.astype(np.float64) / 255.0, labels, spec.voxel_size, mode, masked)


@dataclass
class ViewerState:
    """Which frame and which display options are current; `press(key)` applies one key binding."""

    count: int
    index: int = 0
    color_by: str = "class"
    use_camera_mask: bool = False
    show_ground_truth: bool = False
    quit: bool = False

    def press(self, key: str) -> bool:
        """Apply a key ('N', 'P', 'RIGHT', 'LEFT', 'C', 'M', 'G', 'Q', 'ESC'); True when the display must change."""
        key = key.upper()
        if key in ("N", "RIGHT"):
            if self.index + 1 < self.count:
                self.index += 1
                return True
            return False
        if key in ("P", "LEFT"):
            if self.index > 0:
                self.index -= 1
                return True
            return False
        if key == "C":
            self.color_by = "instance" if self.color_by == "class" else "class"
            return True
        if key == "M":
            self.use_camera_mask = not self.use_camera_mask
            return True
        if key == "G":
            self.show_ground_truth = not self.show_ground_truth
            return True
        if key in ("Q", "ESC"):
            self.quit = True
            return False
        return False


def frame_to_show(
    pairs: list[tuple[OccupancyFrame, OccupancyFrame | None]], state: ViewerState
) -> tuple[OccupancyFrame, np.ndarray | None, str]:
    """(frame, camera mask to use, window title) for the current state. A prediction borrows its ground truth's
    camera mask; G on a frame without ground truth keeps the prediction."""
    pred, gt = pairs[state.index]
    frame = gt if (state.show_ground_truth and gt is not None) else pred
    mask = frame.mask_camera if frame.mask_camera is not None else (gt.mask_camera if gt is not None else None)
    what = "ground truth" if frame is gt else frame.kind.replace("_", " ")
    options = [f"colour: {state.color_by}"] + (["camera mask"] if state.use_camera_mask else [])
    title = f"[{state.index + 1}/{len(pairs)}] {frame.name} - {what} ({', '.join(options)})"
    return frame, mask, title


def import_open3d():
    try:
        import open3d as o3d
    except ImportError as exc:
        raise RuntimeError(f"{OPEN3D_MISSING} ({exc})") from None
    return o3d


def to_open3d(geometry: VoxelGeometry):
    """An Open3D VoxelGrid of the prepared voxels."""
    o3d = import_open3d()
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(geometry.centers.astype(np.float64)))
    cloud.colors = o3d.utility.Vector3dVector(geometry.colors)
    return o3d.geometry.VoxelGrid.create_from_point_cloud_within_bounds(
        cloud, geometry.voxel_size, np.asarray(OCC_GRID.lower, float), np.asarray(OCC_GRID.upper, float)
    )


def ego_marker():
    o3d = import_open3d()
    size = np.asarray(EGO_BOX_MAX) - np.asarray(EGO_BOX_MIN)
    box = o3d.geometry.TriangleMesh.create_box(*size)
    box.translate(np.asarray(EGO_BOX_MIN, dtype=float))
    box.paint_uniform_color(np.asarray(EGO_RGB) / 255.0)
    return box


# GLFW key codes used by Open3D's key callbacks.
GLFW_KEYS = {"N": ord("N"), "P": ord("P"), "C": ord("C"), "M": ord("M"), "G": ord("G"), "Q": ord("Q")}
GLFW_KEYS.update({"RIGHT": 262, "LEFT": 263, "ESC": 256})


def display_problem(environ: dict[str, str] | None = None, platform: str | None = None) -> str | None:
    """Why no desktop window can be shown here, or None. On Linux without DISPLAY/WAYLAND_DISPLAY, Open3D's GLFW
    either fails or (when libOSMesa is installed) opens an invisible window whose event loop never ends."""
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if platform.startswith("linux") and not environ.get("DISPLAY") and not environ.get("WAYLAND_DISPLAY"):
        return "no display (DISPLAY and WAYLAND_DISPLAY are unset); use flashocc-render for pictures"
    return None


class ViewerSession:
    """What the window shows and what each key does. `vis` is an Open3D VisualizerWithKeyCallback (anything with
    its add_geometry / remove_geometry / close methods works, which is how this is tested without a window);
    `build` turns prepared voxels into what is added to `vis` (default: an Open3D VoxelGrid)."""

    def __init__(
        self,
        pairs: list[tuple[OccupancyFrame, OccupancyFrame | None]],
        vis,
        *,
        color_by: str = "class",
        use_camera_mask: bool = False,
        build=None,
    ):
        if not pairs:
            raise ValueError("nothing to show: no frames")
        self.pairs = pairs
        self.vis = vis
        self.build = build or to_open3d
        self.state = ViewerState(len(pairs), color_by=color_by, use_camera_mask=use_camera_mask)
        self.voxels = None  # the Open3D VoxelGrid on screen
        self.geometry: VoxelGeometry | None = None  # what it was built from
        self.title = ""

    def show(self, first: bool = False) -> None:
        """Replace the voxels on screen by those of the current frame and options (keeps the view point)."""
        frame, mask, self.title = frame_to_show(self.pairs, self.state)
        self.geometry = prepare_geometry(
            frame, color_by=self.state.color_by, use_camera_mask=self.state.use_camera_mask, mask=mask
        )
        if self.voxels is not None:
            self.vis.remove_geometry(self.voxels, reset_bounding_box=False)
        self.voxels = self.build(self.geometry)
        self.vis.add_geometry(self.voxels, reset_bounding_box=first)
        print(f"{self.title}: {len(self.geometry)} voxels", flush=True)

    def on_key(self, name: str) -> bool:
        """Apply one key binding; True when the window must redraw (Open3D's key callback convention)."""
        changed = self.state.press(name)
        if self.state.quit:
            self.vis.close()
            return False
        if changed:
            self.show()
        return changed

    def callback(self, name: str):
        return lambda _vis: self.on_key(name)


def run_viewer(
    pairs: list[tuple[OccupancyFrame, OccupancyFrame | None]],
    *,
    color_by: str = "class",
    use_camera_mask: bool = False,
    width: int = 1280,
    height: int = 800,
) -> None:
    """Open the window and step through `pairs` (prediction, ground truth or None) with the keyboard."""
    if not pairs:
        raise ValueError("nothing to show: no frames")
    o3d = import_open3d()
    problem = display_problem()
    if problem:
        raise RuntimeError(f"the viewer needs a desktop window: {problem}")
    vis = o3d.visualization.VisualizerWithKeyCallback()
    if not vis.create_window("flashocc-view", width, height):
        raise RuntimeError("Open3D could not open a window (no display?); use flashocc-render for pictures")
    session = ViewerSession(pairs, vis, color_by=color_by, use_camera_mask=use_camera_mask)
    for name, code in GLFW_KEYS.items():
        vis.register_key_callback(code, session.callback(name))
    vis.add_geometry(ego_marker())
    session.show(first=True)
    options = vis.get_render_option()
    options.background_color = np.ones(3)
    vis.run()
    vis.destroy_window()
