"""The numpy rasteriser: known grids rendered, pixel colours and positions checked."""

import numpy as np
import pytest

from benchmarks.bench_render import street_scene  # the benchmark's scene
from flashocc_ros.config import CLASS_COLORS, FREE_INDEX, OCC_GRID
from flashocc_ros.viz.colors import BACKGROUND_RGB, EGO_RGB
from flashocc_ros.viz.raster import (
    FACE_SHADE,
    ViewCamera,
    bev_pixel,
    fit_camera,
    height_shade,
    rasterise_faces,
    render_bev_image,
    render_perspective_image,
    voxel_faces,
)

SCALE = 3
TOP = 5  # FACE_SHADE index of +z faces


def empty_grid():
    return np.full(OCC_GRID.shape, FREE_INDEX, dtype=np.uint8)


def shaded(cls, factor):
    return tuple(int(round(c * factor)) for c in CLASS_COLORS[cls])


def non_background(image):
    return (image != np.array(BACKGROUND_RGB, np.uint8)).any(axis=2)


def test_bev_single_voxel_position_and_colour():
    grid = empty_grid()
    grid[150, 60, 5] = 4  # 20 m ahead, 16 m to the right
    image = render_bev_image(grid, scale=SCALE, height_shading=False, ego=False)
    assert image.shape == (600, 600, 3)
    r, c = bev_pixel(150, 60, SCALE)
    assert (r, c) == ((199 - 150) * 3 + 1, (199 - 60) * 3 + 1)
    assert tuple(image[r, c]) == CLASS_COLORS[4]
    drawn = np.argwhere(non_background(image))
    assert len(drawn) == SCALE * SCALE  # exactly one voxel's square, nothing else
    assert drawn.min(axis=0).tolist() == [(199 - 150) * 3, (199 - 60) * 3]
    # Forward is up, left is left: the voxel is in the upper half and the right half.
    assert r < 300 and c > 300


def test_bev_shows_top_voxel_with_height_shading():
    grid = empty_grid()
    grid[10, 20, 2] = 11
    grid[10, 20, 9] = 4
    grid[30, 40, 0] = 13
    image = render_bev_image(grid, scale=1, ego=False)
    assert tuple(image[199 - 10, 199 - 20]) == shaded(4, height_shade(9, 16))
    assert tuple(image[199 - 30, 199 - 40]) == shaded(13, height_shade(0, 16))
    assert height_shade(0, 16) < height_shade(15, 16) == 1.0


def test_bev_every_class():
    grid = empty_grid()
    for cls in range(FREE_INDEX):
        grid[20 + 8 * cls, 100, 3] = cls
    image = render_bev_image(grid, scale=SCALE, height_shading=False, ego=False)
    for cls in range(FREE_INDEX):
        assert tuple(image[bev_pixel(20 + 8 * cls, 100, SCALE)]) == CLASS_COLORS[cls], cls
    assert non_background(image).sum() == FREE_INDEX * SCALE * SCALE


def test_bev_instance_colours_and_ego_marker():
    grid = empty_grid()
    grid[120, 120, 4] = 4
    colors = np.zeros(OCC_GRID.shape + (3,), np.uint8)
    colors[120, 120, 4] = (1, 2, 3)
    image = render_bev_image(grid, colors, scale=SCALE, height_shading=False)
    assert tuple(image[bev_pixel(120, 120, SCALE)]) == (1, 2, 3)
    # Ego box: x from -1.0 to 3.1 m (rear axle at 0), i.e. rows 277..307 at 7.5 px/m; light front third.
    assert tuple(image[300, 300]) == EGO_RGB
    assert tuple(image[280, 300]) == (200, 200, 200)
    assert tuple(image[312, 300]) == BACKGROUND_RGB


def test_bev_rejects_wrong_dimensions():
    with pytest.raises(ValueError, match="3-D"):
        render_bev_image(np.zeros((200, 200), np.uint8))


def side_camera():
    """Looking along +x from behind the grid at 1.2 m height."""
    return ViewCamera(eye=(-30.0, 0.2, 1.2), target=(0.0, 0.2, 1.2), fov_deg=40.0, width=320, height=240)


def test_perspective_single_voxel_top_face():
    grid = empty_grid()
    ix, iy, iz = 120, 100, 4
    grid[ix, iy, iz] = 7
    camera = fit_camera(width=480, height=360)
    image, depth = rasterise_faces(voxel_faces(grid, None, camera), camera, outline=False)
    x, y, z = OCC_GRID.voxel_center(ix, iy, iz)
    (u, v), d = (a[0] for a in camera.project(np.array([[x, y, z + OCC_GRID.voxel_size / 2]])))
    assert tuple(image[int(v), int(u)]) == shaded(7, FACE_SHADE[TOP])
    assert depth[int(v), int(u)] == pytest.approx(d, rel=1e-2)
    drawn = np.argwhere(non_background(image))
    assert 1 <= len(drawn) < 40  # a single small voxel
    assert np.abs(drawn - [v, u]).max() < 6  # ... where its centre projects
    assert np.isinf(depth[~non_background(image)]).all()


def test_perspective_wall_hides_voxel_behind_it():
    camera = side_camera()
    target = empty_grid()
    target[150, 100, 5] = 7  # pedestrian 20 m ahead at z = 1.2 m
    x, y, z = OCC_GRID.voxel_center(150, 100, 5)
    (u, v), _ = (a[0] for a in camera.project(np.array([[x - 0.2, y, z]])))
    alone = render_perspective_image(target, camera=camera, ego=False, outline=False)
    # The -x face of the pedestrian faces the camera (shade of -x faces).
    assert tuple(alone[int(v), int(u)]) == shaded(7, FACE_SHADE[0])
    walled = target.copy()
    walled[120, 80:121, 0:12] = 15  # a manmade wall 8 m ahead, between the camera and the pedestrian
    image = render_perspective_image(walled, camera=camera, ego=False, outline=False)
    assert tuple(image[int(v), int(u)]) == shaded(15, FACE_SHADE[0])
    assert not (image == np.array(shaded(7, FACE_SHADE[0]), np.uint8)).all(axis=2).any()


def test_perspective_every_class_visible():
    grid = empty_grid()
    for cls in range(FREE_INDEX):
        grid[60 + 5 * cls, 90:110, 2:4] = cls
    camera = fit_camera(width=480, height=360)
    image = render_perspective_image(grid, camera=camera, ego=False, outline=False)
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    for cls in range(FREE_INDEX):
        assert shaded(cls, FACE_SHADE[TOP]) in colours, cls


def test_perspective_ego_box_and_empty_grid():
    camera = fit_camera(width=320, height=240)
    image = render_perspective_image(empty_grid(), camera=camera, ego=True)
    assert non_background(image).any()
    (u, v), _ = (a[0] for a in camera.project(np.array([[1.0, 0.0, 1.7]])))
    assert tuple(image[int(v), int(u)]) == tuple(int(round(c * FACE_SHADE[TOP])) for c in EGO_RGB)
    assert not non_background(render_perspective_image(empty_grid(), camera=camera, ego=False)).any()


def test_fit_camera_sees_the_whole_grid():
    camera = fit_camera(width=640, height=480)
    lo, hi = OCC_GRID.lower, OCC_GRID.upper
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    uv, depth = camera.project(corners)
    assert (depth > 0).all()
    assert (uv[:, 0] >= 0).all() and (uv[:, 0] <= 640).all() and (uv[:, 1] >= 0).all() and (uv[:, 1] <= 480).all()


def test_full_grid_renders():
    """A full street grid renders to a filled picture (its speed is measured by benchmarks/bench_render.py)."""
    image = render_perspective_image(street_scene())
    assert image.shape == (720, 960, 3)
    assert non_background(image).mean() > 0.2
