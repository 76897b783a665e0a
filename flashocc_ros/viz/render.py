"""Pictures and videos of occupancy: prediction vs ground truth side by side, class legend, camera images.

The 3D view uses Open3D's off-screen renderer when it is installed and works here (checked once, in a
subprocess, since a missing EGL can abort the process); otherwise the numpy rasteriser of `raster.py` draws it.
The bird's-eye view is always drawn by the rasteriser (it is an exact per-voxel picture). Every function reports
which renderer drew the 3D view. Files are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from flashocc_ros.atomic import atomic_write, temp_path_beside
from flashocc_ros.config import CAMERA_NAMES, CLASS_NAMES, FREE_INDEX, OCC_GRID, GridSpec
from flashocc_ros.viz.colors import BACKGROUND_RGB, CLASS_PALETTE, legend_classes, panoptic_colors
from flashocc_ros.viz.raster import (
    EGO_BOX_MAX,
    EGO_BOX_MIN,
    FACE_SHADE,
    ViewCamera,
    box_faces,
    fit_camera,
    render_bev_image,
    render_perspective_image,
    voxel_faces,
)

RENDERERS = ("auto", "open3d", "raster")
VIEWS = ("bev", "3d")
VIDEO_SUFFIXES = (".mp4", ".gif")
PANEL_BACKGROUND = BACKGROUND_RGB
CANVAS_RGB = (245, 245, 245)
TEXT_RGB = (20, 20, 20)
MARGIN = 12
HEADER_H = 30
BEV_SCALE = 3
VIEW_W, VIEW_H = 800, 600


class RenderError(RuntimeError):
    """Rendering cannot proceed (e.g. Open3D was asked for but does not work here)."""


@dataclass
class RenderResult:
    path: Path
    renderer: str  # what drew the 3D view: "open3d", "raster", or "none" when no 3D view was drawn
    message: str  # one line for the user: which renderer and why
    frames: int = 1


@dataclass
class Layout:
    """Where each panel of a composed picture lies: name -> (x0, y0, x1, y1), e.g. 'prediction/bev'."""

    panels: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)

    def crop(self, image: np.ndarray, name: str) -> np.ndarray:
        x0, y0, x1, y1 = self.panels[name]
        return image[y0:y1, x0:x1]


# ----------------------------------------------------------------------------------------------------------------
# Renderer choice
# ----------------------------------------------------------------------------------------------------------------

_OPEN3D_PROBE: tuple[bool, str] | None = None
# Environment the in-process renderer needs (found by the probe), e.g. {"EGL_PLATFORM": "surfaceless"}.
_OPEN3D_ENV: dict[str, str] = {}
# Off-screen renderers by image size, reused: creating one costs ~0.6 s (3 s for the first in a process).
_OFFSCREEN: dict[tuple[int, int], object] = {}
PROBE_TIMEOUT_S = 60.0
_PROBE_CODE = (
    "import open3d as o3d, numpy as np\n"
    "r = o3d.visualization.rendering.OffscreenRenderer(32, 32)\n"
    "img = np.asarray(r.render_to_image())\n"
    "assert img.shape[:2] == (32, 32), img.shape\n"
)
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def run_probe(env: dict[str, str] | None = None, code: str = _PROBE_CODE, timeout: float = PROBE_TIMEOUT_S):
    """Run `code` in a fresh interpreter (a missing EGL makes Open3D crash the process, e.g. SIGSEGV after
    'eglInitialize failed'); returns (works, why not) within `timeout` seconds."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"probe timed out after {timeout:g} s"
    if proc.returncode == 0:
        return True, ""
    lines = [_ANSI_ESCAPE.sub("", line).strip() for line in proc.stderr.splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    if proc.returncode < 0:
        try:
            how = f"probe process killed by {signal.Signals(-proc.returncode).name}"
        except ValueError:
            how = f"probe process killed by signal {-proc.returncode}"
    else:
        how = f"probe exit code {proc.returncode}"
    return False, f"{last[:160]}; {how}" if last else how


def open3d_installed() -> bool:
    return importlib.util.find_spec("open3d") is not None


def open3d_offscreen_status() -> tuple[bool, str]:
    """(works, reason): whether Open3D's off-screen renderer runs on this machine (probed once per process).

    The probe runs with the current environment first; on Linux without EGL_PLATFORM set, it then tries Mesa's
    display-less EGL (EGL_PLATFORM=surfaceless), which the in-process renderer then uses too."""
    global _OPEN3D_PROBE
    if _OPEN3D_PROBE is None:
        if os.environ.get("FLASHOCC_NO_OPEN3D") == "1":
            _OPEN3D_PROBE = (False, "disabled by FLASHOCC_NO_OPEN3D=1")
        elif not open3d_installed():
            _OPEN3D_PROBE = (False, "open3d is not installed (pip install 'flashocc_ros[view]')")
        else:
            works, why = run_probe()
            if works:
                _OPEN3D_PROBE = (True, "open3d off-screen rendering works")
            elif "EGL_PLATFORM" not in os.environ and sys.platform.startswith("linux"):
                surfaceless = {"EGL_PLATFORM": "surfaceless"}
                works, why_surfaceless = run_probe(surfaceless)
                if works:
                    _OPEN3D_ENV.update(surfaceless)
                    _OPEN3D_PROBE = (True, "open3d off-screen rendering works with EGL_PLATFORM=surfaceless")
                else:
                    _OPEN3D_PROBE = (
                        False,
                        f"open3d off-screen rendering failed here ({why}; with EGL_PLATFORM=surfaceless: "
                        f"{why_surfaceless})",
                    )
            else:
                _OPEN3D_PROBE = (False, f"open3d off-screen rendering failed here ({why})")
    return _OPEN3D_PROBE


def choose_renderer(requested: str = "auto") -> tuple[str, str]:
    """(renderer, message) for the 3D view: 'open3d' or 'raster'."""
    if requested not in RENDERERS:
        raise ValueError(f"renderer {requested!r} is not one of {', '.join(RENDERERS)}")
    if requested == "raster":
        return "raster", "3D view: numpy raster renderer (requested)"
    works, why = open3d_offscreen_status()
    if works:
        return "open3d", f"3D view: Open3D off-screen renderer ({why})"
    if requested == "open3d":
        raise RenderError(f"Open3D renderer requested but unavailable: {why}")
    return "raster", f"3D view: numpy raster renderer (fallback: {why})"


def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """sRGB values in [0,1] -> linear light (Filament treats vertex colours as linear and encodes its output as
    sRGB, so without this every colour comes out lighter)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def _offscreen_renderer(width: int, height: int):
    from open3d.visualization import rendering

    renderer = _OFFSCREEN.get((width, height))
    if renderer is None:
        os.environ.update(_OPEN3D_ENV)  # read by libEGL when the first renderer starts
        renderer = rendering.OffscreenRenderer(width, height)
        # Linear tone mapping: Open3D's default (filmic) tone mapper changes every colour, white included.
        grading = rendering.ColorGrading
        renderer.scene.view.set_color_grading(grading(grading.Quality.ULTRA, grading.ToneMapping.LINEAR))
        _OFFSCREEN[(width, height)] = renderer
    renderer.scene.clear_geometry()
    return renderer


def render_3d_open3d(
    grid: np.ndarray, colors: np.ndarray | None, camera: ViewCamera, *, ego: bool = True, spec: GridSpec = OCC_GRID
) -> np.ndarray:
    """The 3D view with Open3D's off-screen renderer: the same faces as the raster view, flat (unlit) colours.

    Raises RenderError (instead of letting Open3D crash the process) when the probe found it does not work here."""
    works, why = open3d_offscreen_status()
    if not works:
        raise RenderError(f"Open3D renderer unavailable: {why}")
    import open3d as o3d
    from open3d.visualization import rendering

    faces = voxel_faces(grid, colors, camera, spec=spec)
    if ego:
        from flashocc_ros.viz.colors import EGO_RGB

        faces = type(faces).concat([faces, box_faces(EGO_BOX_MIN, EGO_BOX_MAX, EGO_RGB, camera)])
    shade = np.asarray(FACE_SHADE)[faces.normal_code]
    rgb = np.clip(faces.rgb.astype(np.float64) * shade[:, None] / 255.0, 0.0, 1.0)
    n = len(rgb)
    vertices = faces.corners.reshape(-1, 3)
    base = 4 * np.arange(n)[:, None]
    triangles = np.concatenate([base + [0, 1, 2], base + [0, 2, 3]]).astype(np.int32)
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(triangles))
    mesh.vertex_colors = o3d.utility.Vector3dVector(np.repeat(srgb_to_linear(rgb), 4, axis=0))
    renderer = _offscreen_renderer(camera.width, camera.height)
    material = rendering.MaterialRecord()
    material.shader = "defaultUnlit"
    renderer.scene.set_background([c / 255.0 for c in PANEL_BACKGROUND] + [1.0])
    if n:
        renderer.scene.add_geometry("voxels", mesh, material)
    f = camera.focal()
    cx, cy = camera.principal_point()
    intrinsic = o3d.camera.PinholeCameraIntrinsic(camera.width, camera.height, f, f, cx, cy)
    extrinsic = np.eye(4)
    extrinsic[:3, :3] = camera.rotation()
    extrinsic[:3, 3] = -camera.rotation() @ np.asarray(camera.eye)
    renderer.setup_camera(intrinsic, extrinsic)
    return np.asarray(renderer.render_to_image())[:, :, :3].copy()


# ----------------------------------------------------------------------------------------------------------------
# Single views
# ----------------------------------------------------------------------------------------------------------------


def apply_mask(grid: np.ndarray, mask: np.ndarray | None, free_index: int = FREE_INDEX) -> np.ndarray:
    """Grid with every voxel outside `mask` (e.g. Occ3D mask_camera) set to free; `grid` itself is unchanged."""
    if mask is None:
        return grid
    mask = np.asarray(mask).astype(bool)
    if mask.shape != grid.shape:
        raise ValueError(f"mask shape {mask.shape} does not match grid shape {grid.shape}")
    return np.where(mask, grid, np.asarray(free_index, dtype=grid.dtype))


def view_image(
    view: str,
    grid: np.ndarray,
    colors: np.ndarray | None = None,
    *,
    renderer: str = "raster",
    camera: ViewCamera | None = None,
    ego: bool = True,
) -> np.ndarray:
    """One view ('bev' or '3d') of a grid as an RGB uint8 array."""
    if view == "bev":
        return render_bev_image(grid, colors, scale=BEV_SCALE, ego=ego)
    if view == "3d":
        camera = camera or fit_camera(width=VIEW_W, height=VIEW_H)
        if renderer == "open3d":
            return render_3d_open3d(grid, colors, camera, ego=ego)
        return render_perspective_image(grid, colors, camera=camera, ego=ego)
    raise ValueError(f"view {view!r} is not one of {', '.join(VIEWS)}")


# ----------------------------------------------------------------------------------------------------------------
# Composition
# ----------------------------------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    x0, _, x1, _ = draw.textbbox((0, 0), text, font=font)
    return int(x1 - x0)


def legend_image(classes: list[int], width: int, *, instances: bool = False) -> np.ndarray:
    """Legend strip (swatch + class name per entry, wrapped to `width`) as RGB uint8."""
    font = _font(15)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = [(tuple(int(v) for v in CLASS_PALETTE[c]), CLASS_NAMES[c]) for c in classes]
    if instances:
        entries.append((None, "things: one colour per instance id"))
    swatch, gap, row_h = 16, 18, 24
    rows: list[list[tuple]] = [[]]
    x = MARGIN
    for color, name in entries:
        w = swatch + 6 + _text_width(probe, name, font) + gap
        if x + w > width - MARGIN and rows[-1]:
            rows.append([])
            x = MARGIN
        rows[-1].append((x, color, name))
        x += w
    height = max(len(rows), 1) * row_h + 8
    image = Image.new("RGB", (width, height), CANVAS_RGB)
    draw = ImageDraw.Draw(image)
    for r, row in enumerate(rows):
        y = 4 + r * row_h
        for x, color, name in row:
            if color is not None:
                draw.rectangle([x, y + 3, x + swatch, y + 3 + swatch], fill=color, outline=(90, 90, 90))
                tx = x + swatch + 6
            else:
                tx = x
            draw.text((tx, y + 2), name, fill=TEXT_RGB, font=font)
    return np.asarray(image)


def _paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int) -> tuple[int, int, int, int]:
    h, w = image.shape[:2]
    canvas[y : y + h, x : x + w] = image[:, :, :3]
    return (x, y, x + w, y + h)


def compose_comparison(
    pred: np.ndarray,
    gt: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
    title: str | None = None,
    views: tuple[str, ...] = VIEWS,
    renderer: str = "auto",
    pred_panoptic: np.ndarray | None = None,
    gt_panoptic: np.ndarray | None = None,
    ego: bool = True,
    labels: tuple[str, str] = ("Prediction", "Ground truth"),
) -> tuple[np.ndarray, Layout, str, str]:
    """Columns = prediction (and ground truth), rows = views, legend below.

    `mask` (e.g. mask_camera) hides voxels outside it in both grids. With a panoptic grid the things are coloured
    by instance. Returns (image RGB uint8, layout of the panels, renderer used for 3D, message).
    """
    for v in views:
        if v not in VIEWS:
            raise ValueError(f"view {v!r} is not one of {', '.join(VIEWS)}")
    used, message = choose_renderer(renderer) if "3d" in views else ("none", "no 3D view drawn")
    columns = [(labels[0], pred, pred_panoptic)] + ([(labels[1], gt, gt_panoptic)] if gt is not None else [])
    panels: list[list[np.ndarray]] = []
    shown = []
    for _, grid, panoptic in columns:
        grid = apply_mask(np.asarray(grid), mask)
        shown.append(grid)
        colors = panoptic_colors(panoptic) if panoptic is not None else None
        column = []
        for v in views:
            try:
                column.append(view_image(v, grid, colors, renderer=used, ego=ego))
            except Exception as exc:
                if used != "open3d" or renderer == "open3d":
                    raise
                used, message = "raster", f"3D view: numpy raster renderer (fallback: Open3D failed: {exc})"
                column.append(view_image(v, grid, colors, renderer=used, ego=ego))
        panels.append(column)

    col_w = max(p.shape[1] for col in panels for p in col)
    row_h = [max(col[r].shape[0] for col in panels) for r in range(len(views))]
    width = MARGIN + len(columns) * (col_w + MARGIN)
    title_h = HEADER_H if title else 0
    legend = legend_image(legend_classes(*shown), width, instances=any(c[2] is not None for c in columns))
    height = MARGIN + title_h + HEADER_H + sum(h + MARGIN for h in row_h) + legend.shape[0]
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = CANVAS_RGB
    layout = Layout()
    y_views = MARGIN + title_h + HEADER_H
    for c in range(len(columns)):
        x = MARGIN + c * (col_w + MARGIN)
        y = y_views
        for r, v in enumerate(views):
            image = panels[c][r]
            xo = x + (col_w - image.shape[1]) // 2
            layout.panels[f"{'prediction' if c == 0 else 'ground_truth'}/{v}"] = _paste(canvas, image, xo, y)
            y += row_h[r] + MARGIN
    layout.panels["legend"] = _paste(canvas, legend, 0, height - legend.shape[0])

    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    if title:
        draw.text((MARGIN, MARGIN), title, fill=TEXT_RGB, font=_font(20))
    for c, (label, _, _) in enumerate(columns):
        x = MARGIN + c * (col_w + MARGIN)
        draw.text((x + 4, MARGIN + title_h + 4), label, fill=TEXT_RGB, font=_font(18))
    return np.asarray(pil), layout, used, message


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def save_png(image: np.ndarray, out_png: str | Path) -> Path:
    """Write an RGB image atomically (temp name, then rename)."""
    return atomic_write(out_png, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"), keep_suffix=True)


def render_comparison(
    pred: np.ndarray,
    gt: np.ndarray | None,
    out_png: str | Path,
    mask: np.ndarray | None = None,
    title: str | None = None,
    *,
    views: tuple[str, ...] = VIEWS,
    renderer: str = "auto",
    pred_panoptic: np.ndarray | None = None,
    gt_panoptic: np.ndarray | None = None,
) -> RenderResult:
    """PNG of prediction vs ground truth (bird's-eye and 3D views, legend). `gt` may be None (prediction only)."""
    image, _, used, message = compose_comparison(
        pred,
        gt,
        mask=mask,
        title=title,
        views=views,
        renderer=renderer,
        pred_panoptic=pred_panoptic,
        gt_panoptic=gt_panoptic,
    )
    return RenderResult(save_png(image, out_png), used, message)


def render_bev(
    grid: np.ndarray,
    out_png: str | Path,
    *,
    mask: np.ndarray | None = None,
    panoptic: np.ndarray | None = None,
    title: str | None = None,
) -> RenderResult:
    """PNG of the bird's-eye view of one grid with a legend."""
    image, _, used, message = compose_comparison(
        grid, None, mask=mask, title=title, views=("bev",), pred_panoptic=panoptic, labels=("Occupancy", "")
    )
    return RenderResult(save_png(image, out_png), used, message)


def camera_mosaic(images: list[np.ndarray] | None, width: int) -> np.ndarray:
    """Six camera images as 2 rows x 3 (front-left, front, front-right / back-left, back, back-right), `width` wide;
    grey tiles with the camera name where an image is missing."""
    tile_w = width // 3
    tile_h = int(round(tile_w * 9 / 16))
    mosaic = Image.new("RGB", (width, 2 * tile_h), (60, 60, 60))
    draw = ImageDraw.Draw(mosaic)
    font = _font(16)
    for i, name in enumerate(CAMERA_NAMES):
        x, y = (i % 3) * tile_w, (i // 3) * tile_h
        if images is not None and i < len(images) and images[i] is not None:
            tile = Image.fromarray(np.asarray(images[i])[:, :, :3]).resize((tile_w, tile_h), Image.BILINEAR)
            mosaic.paste(tile, (x, y))
        draw.text((x + 6, y + 4), name, fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(mosaic)


def _pad_to(image: np.ndarray, multiple: int = 16) -> np.ndarray:
    h, w = image.shape[:2]
    H, W = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    if (H, W) == (h, w):
        return image
    out = np.empty((H, W, 3), dtype=np.uint8)
    out[:] = CANVAS_RGB
    out[:h, :w] = image
    return out


class VideoWriter:
    """MP4 or GIF writer: GIF via imageio (Pillow plugin); MP4 via imageio's ffmpeg plugin when imageio-ffmpeg is
    installed, else OpenCV's bundled ffmpeg (mp4v). Writes to a temporary name; `close()` renames when complete."""

    def __init__(self, path: str | Path, fps: float = 2.0):
        self.path = Path(path)
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{self.path}: video must end in {' or '.join(VIDEO_SUFFIXES)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = float(fps)
        self._tmp = temp_path_beside(self.path, keep_suffix=True)
        self._frames: list[np.ndarray] = []
        self._cv = None
        self._size: tuple[int, int] | None = None
        self.count = 0
        gif = self.path.suffix.lower() == ".gif"
        self.backend = "imageio-pillow" if gif else ("imageio-ffmpeg" if _has("imageio_ffmpeg") else "opencv")
        self._ffmpeg = None

    def append(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame[:, :, :3])
        if self._size is None:
            self._size = frame.shape[:2]
        elif frame.shape[:2] != self._size:
            frame = np.asarray(Image.fromarray(frame).resize(self._size[::-1], Image.BILINEAR))
        if self.backend == "imageio-pillow":
            self._frames.append(frame)
        elif self.backend == "imageio-ffmpeg":
            if self._ffmpeg is None:
                import imageio

                self._ffmpeg = imageio.get_writer(self._tmp, fps=self.fps, macro_block_size=16)
            self._ffmpeg.append_data(frame)
        else:
            import cv2

            if self._cv is None:
                h, w = frame.shape[:2]
                self._cv = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
                if not self._cv.isOpened():
                    raise RenderError(f"{self.path}: OpenCV cannot write MP4 here; write a .gif instead")
            self._cv.write(frame[:, :, ::-1])
        self.count += 1

    def close(self) -> Path:
        try:
            if self.count == 0:
                raise RenderError(f"{self.path}: no frames to write")
            if self.backend == "imageio-pillow":
                import imageio.v3 as iio

                iio.imwrite(self._tmp, np.stack(self._frames), extension=".gif", duration=1000.0 / self.fps, loop=0)
            elif self._ffmpeg is not None:
                self._ffmpeg.close()
            elif self._cv is not None:
                self._cv.release()
            os.replace(self._tmp, self.path)
            return self.path
        finally:
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        if self._ffmpeg is not None:
            self._ffmpeg.close()
        if self._cv is not None:
            self._cv.release()
        self._tmp.unlink(missing_ok=True)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def video_frame(
    pred: np.ndarray,
    gt: np.ndarray | None,
    images: list[np.ndarray] | None,
    *,
    mask: np.ndarray | None = None,
    title: str | None = None,
    views: tuple[str, ...] = VIEWS,
    renderer: str = "auto",
    pred_panoptic: np.ndarray | None = None,
    gt_panoptic: np.ndarray | None = None,
) -> tuple[np.ndarray, str, str]:
    """One video frame: six camera images above the occupancy comparison. Returns (frame, renderer, message)."""
    occupancy, _, used, message = compose_comparison(
        pred,
        gt,
        mask=mask,
        title=title,
        views=views,
        renderer=renderer,
        pred_panoptic=pred_panoptic,
        gt_panoptic=gt_panoptic,
    )
    mosaic = camera_mosaic(images, occupancy.shape[1])
    return _pad_to(np.concatenate([mosaic, occupancy], axis=0)), used, message


@dataclass
class VideoItem:
    """What one video frame shows."""

    pred: np.ndarray
    gt: np.ndarray | None = None
    images: list[np.ndarray] | None = None
    mask: np.ndarray | None = None
    title: str | None = None
    pred_panoptic: np.ndarray | None = None
    gt_panoptic: np.ndarray | None = None


def render_video(
    items: Iterable[VideoItem],
    out_path: str | Path,
    *,
    fps: float = 2.0,
    views: tuple[str, ...] = VIEWS,
    renderer: str = "auto",
    progress=None,
) -> RenderResult:
    """MP4/GIF with one frame per item (cameras above, prediction | ground truth below)."""
    writer = VideoWriter(out_path, fps)
    used, message = "none", ""
    try:
        for item in items:
            frame, used, message = video_frame(
                item.pred,
                item.gt,
                item.images,
                mask=item.mask,
                title=item.title,
                views=views,
                renderer=renderer,
                pred_panoptic=item.pred_panoptic,
                gt_panoptic=item.gt_panoptic,
            )
            writer.append(frame)
            if progress is not None:
                progress()
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    return RenderResult(path, used, f"{message}; video: {writer.backend}", frames=writer.count)
