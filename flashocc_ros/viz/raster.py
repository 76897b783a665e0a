"""Pure numpy voxel rasteriser: a bird's-eye view and a perspective 3D view of an occupancy grid.

Written here rather than taken from a library because the pictures must be produced on any headless machine
(no OpenGL/EGL): matplotlib's mplot3d is far too slow for 10^5 voxels and sorts whole polygons, not pixels.

Conventions: the grid is indexed [ix, iy, iz] in the ego frame (x forward, y left, z up), see config.GridSpec.
Bird's-eye view: forward is up and left is left, so image row r shows ix = X-1-r and column c shows iy = Y-1-c.
The perspective view is a pinhole camera (`ViewCamera`) looking at the visible faces of the occupied voxels; every
face is rasterised exactly (pixel centres inside the projected quad) with a per-pixel depth test (z-buffer), so
occlusion is correct whatever the face order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flashocc_ros.config import FREE_INDEX, OCC_GRID, GridSpec
from flashocc_ros.viz.colors import BACKGROUND_RGB, EGO_RGB, class_colors

# Ego vehicle box in the ego frame (nuScenes ego origin = rear axle centre on the ground), metres.
EGO_BOX_MIN: tuple[float, float, float] = (-1.0, -0.95, 0.0)
EGO_BOX_MAX: tuple[float, float, float] = (3.1, 0.95, 1.7)

# Brightness of a face by the axis and sign of its outward normal: (-x, +x, -y, +y, -z, +z).
FACE_SHADE: tuple[float, ...] = (0.78, 0.78, 0.64, 0.64, 0.5, 1.0)
OUTLINE_SHADE = 0.72  # darkening of the pixels on the border of a face (when the face is large enough)
_MAX_CANDIDATES = 1_000_000  # candidate pixels rasterised per chunk (bounds memory to a few hundred MB)


# ----------------------------------------------------------------------------------------------------------------
# Bird's-eye view
# ----------------------------------------------------------------------------------------------------------------


def top_voxels(grid: np.ndarray, free_index: int = FREE_INDEX) -> tuple[np.ndarray, np.ndarray]:
    """(top iz per column (X,Y) int, column has a non-free voxel (X,Y) bool)."""
    occupied = grid != free_index
    depth = grid.shape[2]
    top = depth - 1 - np.argmax(occupied[:, :, ::-1], axis=2)
    return top, occupied.any(axis=2)


def height_shade(iz: np.ndarray, depth: int) -> np.ndarray:
    """Brightness factor of a voxel at height index iz in the bird's-eye view: 0.7 (lowest) .. 1.0 (highest)."""
    return 0.7 + 0.3 * np.asarray(iz, dtype=np.float64) / max(depth - 1, 1)


def bev_pixel(ix: int, iy: int, scale: int, grid_shape: tuple[int, ...] = OCC_GRID.shape) -> tuple[int, int]:
    """(row, column) of the centre pixel of column (ix, iy) in a bird's-eye image with `scale` pixels per voxel."""
    return (grid_shape[0] - 1 - ix) * scale + scale // 2, (grid_shape[1] - 1 - iy) * scale + scale // 2


def render_bev_image(
    grid: np.ndarray,
    colors: np.ndarray | None = None,
    *,
    scale: int = 3,
    height_shading: bool = True,
    free_index: int = FREE_INDEX,
    background: tuple[int, int, int] = BACKGROUND_RGB,
    ego: bool = True,
    spec: GridSpec = OCC_GRID,
) -> np.ndarray:
    """Bird's-eye image (X*scale, Y*scale, 3) uint8 of the top-most non-free voxel of every column.

    `colors` (X,Y,Z,3) uint8 overrides the class colours (e.g. instance colours); free voxels are never drawn.
    """
    grid = np.asarray(grid)
    if grid.ndim != 3:
        raise ValueError(f"occupancy grid must be 3-D [ix, iy, iz], got shape {grid.shape}")
    top, has = top_voxels(grid, free_index)
    ix, iy = np.nonzero(has)
    iz = top[ix, iy]
    if colors is None:
        rgb = class_colors(grid[ix, iy, iz]).astype(np.float64)
    else:
        rgb = np.asarray(colors)[ix, iy, iz].astype(np.float64)
    if height_shading:
        rgb *= height_shade(iz, grid.shape[2])[:, None]
    small = np.empty(grid.shape[:2] + (3,), dtype=np.uint8)
    small[:] = background
    small[ix, iy] = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    image = small[::-1, ::-1]
    if scale > 1:
        image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    image = np.ascontiguousarray(image)
    if ego:
        draw_bev_ego(image, scale, spec)
    return image


def draw_bev_ego(image: np.ndarray, scale: int, spec: GridSpec = OCC_GRID) -> None:
    """Draw the ego vehicle footprint in place: a dark box with a light front third showing the heading."""
    px_per_m = scale / spec.voxel_size

    def row(x: float) -> float:  # image row of ego x (forward is up)
        return (spec.upper[0] - x) * px_per_m

    def col(y: float) -> float:  # image column of ego y (left is left)
        return (spec.upper[1] - y) * px_per_m

    r0, r1 = int(round(row(EGO_BOX_MAX[0]))), int(round(row(EGO_BOX_MIN[0])))
    c0, c1 = int(round(col(EGO_BOX_MAX[1]))), int(round(col(EGO_BOX_MIN[1])))
    r0, c0 = max(r0, 0), max(c0, 0)
    image[r0:r1, c0:c1] = EGO_RGB
    front = r0 + max((r1 - r0) // 3, 1)
    image[r0:front, c0:c1] = (200, 200, 200)


# ----------------------------------------------------------------------------------------------------------------
# Perspective view
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewCamera:
    """A pinhole camera in the ego frame looking from `eye` at `target` (`up` is the world up direction)."""

    eye: tuple[float, float, float] = (-46.0, 30.0, 38.0)
    target: tuple[float, float, float] = (6.0, -2.0, -4.0)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov_deg: float = 52.0  # vertical field of view
    width: int = 960
    height: int = 720
    principal_offset: tuple[float, float] = (0.0, 0.0)  # principal point minus the image centre, pixels

    def principal_point(self) -> tuple[float, float]:
        return self.width / 2.0 + self.principal_offset[0], self.height / 2.0 + self.principal_offset[1]

    def rotation(self) -> np.ndarray:
        """(3,3) world->camera rotation, rows = camera right, down, forward (optical convention)."""
        eye, target, up = (np.asarray(v, dtype=np.float64) for v in (self.eye, self.target, self.up))
        forward = target - eye
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, up)
        norm = np.linalg.norm(right)
        if norm < 1e-9:
            raise ValueError(f"camera looks along its up vector {self.up}; choose another up or target")
        right /= norm
        down = np.cross(forward, right)
        return np.stack([right, down, forward])

    def focal(self) -> float:
        return 0.5 * self.height / np.tan(np.radians(self.fov_deg) / 2.0)

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) -> camera coordinates (..., 3) (z = depth along the viewing direction)."""
        return (np.asarray(points, dtype=np.float64) - np.asarray(self.eye)) @ self.rotation().T

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N,3) -> (pixel coordinates (N,2) as (u=column, v=row), depth (N,))."""
        cam = self.to_camera(points)
        f = self.focal()
        cx, cy = self.principal_point()
        u = f * cam[..., 0] / cam[..., 2] + cx
        v = f * cam[..., 1] / cam[..., 2] + cy
        return np.stack([u, v], axis=-1), cam[..., 2]


def fit_camera(
    spec: GridSpec = OCC_GRID,
    *,
    azimuth_deg: float = 165.0,
    elevation_deg: float = 42.0,
    fov_deg: float = 40.0,
    width: int = 960,
    height: int = 720,
    margin: float = 0.04,
) -> ViewCamera:
    """A camera looking at the grid centre from direction (azimuth from +x towards +y, elevation above the ground),
    at the smallest distance at which the whole grid box fits in the image with `margin` (fraction) to spare; the
    principal point is shifted so that the grid's picture is centred."""
    lo, hi = np.asarray(spec.lower), np.asarray(spec.upper)
    center = (lo + hi) / 2.0
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    direction = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])

    def make(distance: float, centred: bool = False) -> ViewCamera:
        eye = center + distance * direction
        cam = ViewCamera(tuple(eye), tuple(center), (0.0, 0.0, 1.0), fov_deg, width, height)
        if centred:
            uv, _ = cam.project(corners)
            mid = (uv.min(axis=0) + uv.max(axis=0)) / 2.0
            offset = (float(width / 2.0 - mid[0]), float(height / 2.0 - mid[1]))
            cam = ViewCamera(cam.eye, cam.target, cam.up, fov_deg, width, height, offset)
        return cam

    def fits(cam: ViewCamera) -> bool:
        uv, depth = cam.project(corners)
        span = uv.max(axis=0) - uv.min(axis=0)
        return bool(
            (depth > 0.5).all() and span[0] <= (1.0 - 2.0 * margin) * width and span[1] <= (1.0 - 2.0 * margin) * height
        )

    near, far = 1.0, 1.0
    while not fits(make(far)):
        near, far = far, far * 2.0
        if far > 1e5:
            raise ValueError("cannot fit the grid in the view; check fov_deg and the image size")
    for _ in range(40):
        mid = 0.5 * (near + far)
        near, far = (near, mid) if fits(make(mid)) else (mid, far)
    return make(far, centred=True)


@dataclass
class FaceSet:
    """Quads to rasterise: corners (F,4,3) world metres in winding order, normal_code (F,) 0..5 = (-x,+x,-y,+y,-z,+z),
    rgb (F,3) uint8."""

    corners: np.ndarray
    normal_code: np.ndarray
    rgb: np.ndarray

    @staticmethod
    def concat(sets: list[FaceSet]) -> FaceSet:
        return FaceSet(
            np.concatenate([s.corners for s in sets]),
            np.concatenate([s.normal_code for s in sets]),
            np.concatenate([s.rgb for s in sets]),
        )


# Unit-square corner offsets on the two in-plane axes, and the in-plane axes for each normal axis.
_SQUARE = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
_PLANE_AXES = {0: (1, 2), 1: (0, 2), 2: (0, 1)}


def _quads(lower: np.ndarray, size: np.ndarray, axis: int, positive: bool) -> np.ndarray:
    """Corners (N,4,3) of the faces of boxes [lower, lower+size] with outward normal along +-axis."""
    a, b = _PLANE_AXES[axis]
    corners = np.repeat(lower[:, None, :], 4, axis=1).copy()
    if positive:
        corners[:, :, axis] += size[:, None, axis]
    corners[:, :, a] += _SQUARE[None, :, 0] * size[:, None, a]
    corners[:, :, b] += _SQUARE[None, :, 1] * size[:, None, b]
    return corners


def voxel_faces(
    grid: np.ndarray,
    colors: np.ndarray | None,
    camera: ViewCamera,
    *,
    free_index: int = FREE_INDEX,
    spec: GridSpec = OCC_GRID,
) -> FaceSet:
    """Faces of non-free voxels that are not covered by a neighbour and face the camera (back faces culled)."""
    occupied = np.asarray(grid) != free_index
    padded = np.pad(occupied, 1, constant_values=False)
    inner = (slice(1, -1),) * 3
    eye = np.asarray(camera.eye, dtype=np.float64)
    lower_corner = np.asarray(spec.lower, dtype=np.float64)
    v = spec.voxel_size
    parts: list[FaceSet] = []
    for axis in range(3):
        for positive in (False, True):
            shift = [slice(1, -1)] * 3
            shift[axis] = slice(2, None) if positive else slice(0, -2)
            exposed = padded[inner] & ~padded[tuple(shift)]
            # Back-face culling: the face plane must lie between the eye and the voxel along this axis.
            n = grid.shape[axis]
            plane = lower_corner[axis] + v * (np.arange(n) + (1 if positive else 0))
            facing = (eye[axis] > plane) if positive else (eye[axis] < plane)
            view_shape = [1, 1, 1]
            view_shape[axis] = n
            exposed &= facing.reshape(view_shape)
            idx = np.nonzero(exposed)
            if idx[0].size == 0:
                continue
            ijk = np.stack(idx, axis=1).astype(np.float64)
            lower = lower_corner + v * ijk
            size = np.full_like(lower, v)
            rgb = class_colors(np.asarray(grid)[idx]) if colors is None else np.asarray(colors)[idx]
            code = np.full(len(lower), 2 * axis + int(positive), dtype=np.int8)
            parts.append(FaceSet(_quads(lower, size, axis, positive), code, rgb.astype(np.uint8)))
    if not parts:
        return FaceSet(np.zeros((0, 4, 3)), np.zeros(0, np.int8), np.zeros((0, 3), np.uint8))
    return FaceSet.concat(parts)


def box_faces(lower, upper, rgb: tuple[int, int, int], camera: ViewCamera) -> FaceSet:
    """The camera-facing faces of one axis-aligned box (used for the ego marker)."""
    lo = np.asarray(lower, dtype=np.float64)[None]
    size = (np.asarray(upper, dtype=np.float64) - lo[0])[None]
    eye = np.asarray(camera.eye)
    parts = []
    for axis in range(3):
        for positive in (False, True):
            plane = lo[0, axis] + (size[0, axis] if positive else 0.0)
            if (eye[axis] > plane) if positive else (eye[axis] < plane):
                code = np.array([2 * axis + int(positive)], np.int8)
                parts.append(FaceSet(_quads(lo, size, axis, positive), code, np.array([rgb], np.uint8)))
    return FaceSet.concat(parts)


def rasterise_faces(
    faces: FaceSet,
    camera: ViewCamera,
    *,
    background: tuple[int, int, int] = BACKGROUND_RGB,
    outline: bool = True,
    near: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer rasterisation of flat-shaded quads -> (image (H,W,3) uint8, depth (H,W) float64, inf = empty).

    A pixel belongs to a face when its centre lies inside the projected (convex) quad; its depth is exact (1/z is
    affine in screen coordinates for a planar face). Per face, edge distances and inverse depth are precomputed as
    affine functions of the pixel position, so each candidate pixel costs a handful of multiply-adds.
    """
    width, height = camera.width, camera.height
    f = camera.focal()
    cx, cy = camera.principal_point()
    inv_zbuf = np.zeros(width * height, dtype=np.float32)
    cbuf = np.empty((width * height, 3), dtype=np.uint8)
    cbuf[:] = background
    if len(faces.rgb) == 0:
        return cbuf.reshape(height, width, 3), np.full((height, width), np.inf)

    cam = camera.to_camera(faces.corners)  # (F,4,3)
    keep = (cam[:, :, 2] > near).all(axis=1)
    cam, code, rgb = cam[keep], faces.normal_code[keep], faces.rgb[keep]
    uv = f * cam[:, :, :2] / cam[:, :, 2:3] + np.array([cx, cy])  # (F,4,2)
    area = _quad_area(uv)
    # Candidate pixels: those whose centre (p + 0.5) lies in the quad's bounding box.
    lo = np.maximum(np.ceil(uv.min(axis=1) - 0.5).astype(np.int64), 0)
    hi = np.minimum(np.floor(uv.max(axis=1) - 0.5).astype(np.int64), [width - 1, height - 1])
    wh = np.maximum(hi - lo + 1, 0)
    count = wh[:, 0] * wh[:, 1]
    keep = (count > 0) & (np.abs(area) > 1e-9)
    cam, code, rgb, uv, lo, wh, count, area = (a[keep] for a in (cam, code, rgb, uv, lo, wh, count, area))
    if len(count) == 0:
        return cbuf.reshape(height, width, 3), np.full((height, width), np.inf)

    # Per-face affine coefficients, columns: 4 edges x (a, b, c) signed distance in pixels (inside > 0), then
    # inverse depth (a, b, c):  value(u, v) = a*u + b*v + c.
    a_pt, b_pt = uv, np.roll(uv, -1, axis=1)
    length = np.maximum(np.linalg.norm(b_pt - a_pt, axis=2), 1e-9)
    orient = np.sign(area)[:, None] / length
    ea = -(b_pt[:, :, 1] - a_pt[:, :, 1]) * orient
    eb = (b_pt[:, :, 0] - a_pt[:, :, 0]) * orient
    ec = -(ea * a_pt[:, :, 0] + eb * a_pt[:, :, 1])
    normal = np.cross(cam[:, 1] - cam[:, 0], cam[:, 3] - cam[:, 0])
    plane_d = np.einsum("fi,fi->f", normal, cam[:, 0])
    plane_d = np.where(np.abs(plane_d) > 1e-12, plane_d, 1e-12)
    za = normal[:, 0] / f / plane_d
    zb = normal[:, 1] / f / plane_d
    zc = (normal[:, 2] - normal[:, 0] * cx / f - normal[:, 1] * cy / f) / plane_d
    coef = np.concatenate([ea, eb, ec, np.stack([za, zb, zc], axis=1)], axis=1).astype(np.float32)  # (F, 15)
    color = rgb.astype(np.float32) * np.asarray(FACE_SHADE, dtype=np.float32)[code][:, None]
    outline_face = outline & (np.sqrt(np.abs(area)) > 10.0)
    border_color = np.clip(np.round(color * OUTLINE_SHADE), 0, 255).astype(np.uint8)
    color = np.clip(np.round(color), 0, 255).astype(np.uint8)

    wh32 = wh[:, 0].astype(np.int32)
    lo32 = lo.astype(np.int32)
    cumulative = np.cumsum(count)
    start, total = 0, len(count)
    while start < total:
        base = cumulative[start - 1] if start else 0
        stop = max(int(np.searchsorted(cumulative, base + _MAX_CANDIDATES, side="right")), start + 1)
        sel = np.arange(start, stop)
        start = stop
        n = count[sel]
        fid = np.repeat(sel.astype(np.int32), n)
        local = np.arange(int(n.sum()), dtype=np.int32) - np.repeat((np.cumsum(n) - n).astype(np.int32), n)
        w = wh32[fid]
        row_in_box = local // w
        px = lo32[fid, 0] + (local - row_in_box * w)
        py = lo32[fid, 1] + row_in_box
        pu = px.astype(np.float32) + np.float32(0.5)
        pv = py.astype(np.float32) + np.float32(0.5)
        c = coef[fid]
        dist = c[:, 0] * pu + c[:, 4] * pv + c[:, 8]
        for i in (1, 2, 3):
            np.minimum(dist, c[:, i] * pu + c[:, 4 + i] * pv + c[:, 8 + i], out=dist)
        inside = dist >= 0.0
        fid, px, py, pu, pv, dist, c = (a[inside] for a in (fid, px, py, pu, pv, dist, c))
        inv_z = c[:, 12] * pu + c[:, 13] * pv + c[:, 14]
        key = py * width + px
        np.maximum.at(inv_zbuf, key, inv_z)
        win = inv_z >= inv_zbuf[key]
        key, fid, dist = key[win], fid[win], dist[win]
        border = outline_face[fid] & (dist < 0.75)
        cbuf[key] = np.where(border[:, None], border_color[fid], color[fid])
    with np.errstate(divide="ignore"):
        depth = np.where(inv_zbuf > 0, 1.0 / inv_zbuf, np.inf)
    return cbuf.reshape(height, width, 3), depth.reshape(height, width)


def _quad_area(uv: np.ndarray) -> np.ndarray:
    """Signed area (shoelace) of quads (F,4,2)."""
    x, y = uv[:, :, 0], uv[:, :, 1]
    return 0.5 * (x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1)


def render_perspective_image(
    grid: np.ndarray,
    colors: np.ndarray | None = None,
    *,
    camera: ViewCamera | None = None,
    free_index: int = FREE_INDEX,
    background: tuple[int, int, int] = BACKGROUND_RGB,
    ego: bool = True,
    outline: bool = True,
    spec: GridSpec = OCC_GRID,
) -> np.ndarray:
    """Perspective picture (H,W,3) uint8 of the non-free voxels (flat-shaded faces, optional ego box)."""
    grid = np.asarray(grid)
    if grid.ndim != 3:
        raise ValueError(f"occupancy grid must be 3-D [ix, iy, iz], got shape {grid.shape}")
    camera = camera or fit_camera(spec)
    faces = voxel_faces(grid, colors, camera, free_index=free_index, spec=spec)
    if ego:
        faces = FaceSet.concat([faces, box_faces(EGO_BOX_MIN, EGO_BOX_MAX, EGO_RGB, camera)])
    image, _ = rasterise_faces(faces, camera, background=background, outline=outline)
    return image
