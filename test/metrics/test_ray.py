"""Ray casting and RayIoU on analytic scenes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flashocc_ros.config import FREE_INDEX, OCC_GRID
from flashocc_ros.metrics import ray

LOWER = np.array(OCC_GRID.lower)
V = OCC_GRID.voxel_size
MANMADE, VEGETATION, BARRIER, CAR, GROUND = 15, 16, 1, 4, 11
AXIS_DIRS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=np.float32)
ROOM_ORIGINS = np.array([[0.2, 0.2, 1.9], [1.0, -2.2, 2.3], [-3.1, 4.5, 0.7]])


def empty_grid() -> np.ndarray:
    return np.full(OCC_GRID.shape, FREE_INDEX, dtype=np.uint8)


def room(plus_x_ix: int = 125, plus_x_class: int = MANMADE, with_plus_y: bool = True) -> np.ndarray:
    """Four walls: +x at ix (x = 10.0 m for 125), -x at ix 70 (x = -12 m), +y at iy 140 (16 m), -y at iy 60 (-16 m)."""
    g = empty_grid()
    g[plus_x_ix] = plus_x_class
    g[70] = VEGETATION
    if with_plus_y:
        g[:, 140] = BARRIER
    g[:, 60] = GROUND
    return g


def room_distances(plus_x_ix: int = 125) -> np.ndarray:
    """Expected exit distance (metres) of the first wall voxel, per origin and axis direction (origin-major)."""
    far_face_plus_x = LOWER[0] + V * (plus_x_ix + 1)
    out = []
    for ox, oy, _ in ROOM_ORIGINS:
        out += [far_face_plus_x - ox, ox - (LOWER[0] + V * 70), (LOWER[1] + V * 141) - oy, oy - (LOWER[1] + V * 60)]
    return np.array(out)


# ----------------------------------------------------------------------------------------------------------------
# Ray set
# ----------------------------------------------------------------------------------------------------------------


def test_ray_set_count_and_pitch_values():
    pitches = ray.lidar_pitch_angles()
    assert pitches.shape == (39,)
    expected_first = [-(math.pi / 2 - math.atan(k)) for k in range(1, 11)]
    np.testing.assert_allclose(pitches[:10], expected_first, rtol=0, atol=1e-15)
    assert pitches[0] == pytest.approx(-math.pi / 4)
    spacing = pitches[9] - pitches[8]
    np.testing.assert_allclose(np.diff(pitches[9:]), spacing, atol=1e-12)
    assert pitches[-2] < 0.21 <= pitches[-1]
    assert np.all(np.diff(pitches) > 0)

    rays = ray.generate_lidar_rays()
    assert rays.shape == (ray.RAYS_PER_ORIGIN, 3) == (14040, 3)
    assert rays.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rays, axis=1), 1.0, atol=1e-6)
    first_ring = rays[:360]
    np.testing.assert_allclose(first_ring[:, 2], math.sin(pitches[0]), atol=1e-7)
    azimuth = np.degrees(np.arctan2(first_ring[:, 1], first_ring[:, 0])) % 360
    np.testing.assert_allclose(azimuth, np.arange(360), atol=1e-4)


def test_subsample_origins_keeps_near_ones_and_spreads_eight():
    xs = np.arange(-60.0, 61.0, 4.0)  # 31 candidates, |x| < 39 keeps 19 of them
    cands = np.stack([xs, np.zeros_like(xs), np.full_like(xs, 1.8)], axis=1)
    kept = ray.subsample_origins(cands)
    near = cands[np.abs(xs) < 39]
    assert len(near) == 19 and kept.shape == (8, 3)
    np.testing.assert_array_equal(kept, near[np.round(np.linspace(0, 18, 8)).astype(int)])
    few = ray.subsample_origins(cands[14:17])
    np.testing.assert_array_equal(few, cands[14:17])


# ----------------------------------------------------------------------------------------------------------------
# Casting
# ----------------------------------------------------------------------------------------------------------------


def test_wall_at_known_distance():
    geometry = ray.ray_geometry(ROOM_ORIGINS, AXIS_DIRS)
    (hits,) = ray.cast_rays([room() != FREE_INDEX], geometry, "cpu")
    np.testing.assert_allclose(hits.distance, room_distances(), atol=2e-5)
    assert hits.hit.all()
    np.testing.assert_array_equal(hits.voxel[0::4, 0], 125)
    np.testing.assert_array_equal(hits.voxel[1::4, 0], 70)
    np.testing.assert_array_equal(hits.voxel[2::4, 1], 140)
    np.testing.assert_array_equal(hits.voxel[3::4, 1], 60)
    # the hit voxel is the one containing the origin's y/z (x rays) or x/z (y rays)
    origin_voxel = np.floor((ROOM_ORIGINS - LOWER) / V).astype(int)
    np.testing.assert_array_equal(hits.voxel[0::4, 1:], origin_voxel[:, 1:])


def test_ray_leaving_grid_reports_last_voxel_and_free():
    geometry = ray.ray_geometry(ROOM_ORIGINS[:1], AXIS_DIRS[:1])
    (hits,) = ray.cast_rays([empty_grid() != FREE_INDEX], geometry, "cpu")
    assert not hits.hit[0]
    assert hits.voxel[0, 0] == OCC_GRID.shape[0] - 1
    assert hits.distance[0] == pytest.approx(40.0 - 0.2, abs=2e-5)


def test_tie_between_axes_steps_y_first_like_the_reference():
    # origin at a voxel centre, direction exactly diagonal in x/y: the x and y boundaries are crossed at the same
    # parameter; the reference kernel then steps y (x only wins a strict comparison).
    origin = np.array([[0.2, 0.2, 2.2]])
    diag = np.array([[math.sqrt(0.5), math.sqrt(0.5), 0.0]], dtype=np.float32)
    geometry = ray.ray_geometry(origin, diag)
    assert geometry.t_max[0, 0] == geometry.t_max[0, 1]
    ix, iy, iz = np.floor((origin[0] - LOWER) / V).astype(int)
    g = empty_grid()
    g[ix + 1, iy, iz] = MANMADE
    g[ix, iy + 1, iz] = VEGETATION
    for force_general in (False, True):
        (hits,) = ray.cast_rays([g != FREE_INDEX], geometry, "cpu", force_general=force_general)
        assert tuple(hits.voxel[0]) == (ix, iy + 1, iz)


def _first_hit_by_slabs(occupied, origin_m, direction):
    """Brute force: intersect the ray with every occupied voxel box; return (entry, exit) metres of the first."""
    idx = np.argwhere(occupied)
    lo = LOWER + idx * V
    hi = lo + V
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - origin_m) / direction
        t2 = (hi - origin_m) / direction
    tn = np.where(np.isnan(t1), -np.inf, np.minimum(t1, t2)).max(axis=1)
    tf = np.where(np.isnan(t1), np.inf, np.maximum(t1, t2)).min(axis=1)
    ok = (tf > tn) & (tf > 0)
    if not ok.any():
        return None
    k = np.flatnonzero(ok)[np.argmin(np.maximum(tn[ok], 0))]
    return max(tn[k], 0.0), tf[k]


def test_lidar_rays_agree_with_brute_force_geometry():
    g = empty_grid()
    g[95:130, 85:120, 0:2] = GROUND  # ground patch
    g[110:116, 96:101, 2:6] = CAR
    g[80:84, 100:140, 0:10] = MANMADE
    occupied = g != FREE_INDEX
    origin = np.array([[0.3, -0.1, 1.84]])
    dirs = ray.generate_lidar_rays()[::23]  # 611 rays spread over all pitches and azimuths
    (hits,) = ray.cast_rays([occupied], ray.ray_geometry(origin, dirs), "cpu")
    checked = 0
    for r in range(len(dirs)):
        d = dirs[r].astype(np.float64)
        brute = _first_hit_by_slabs(occupied, origin[0], d)
        if brute is None:
            assert not hits.hit[r]
            continue
        entry, exit_ = brute
        assert hits.hit[r], f"ray {r} should hit at {entry:.3f} m"
        # same first voxel up to corner ties: the reported voxel is entered where the first one is entered
        lo = LOWER + hits.voxel[r] * V
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (lo - origin[0]) / d, (lo + V - origin[0]) / d
        own_entry = max(np.where(np.isnan(t1), -np.inf, np.minimum(t1, t2)).max(), 0.0)
        own_exit = np.where(np.isnan(t1), np.inf, np.maximum(t1, t2)).min()
        assert own_entry == pytest.approx(entry, abs=1e-4)
        assert hits.distance[r] == pytest.approx(own_exit, abs=1e-4)
        checked += 1
    assert checked > 100


def test_origin_above_grid_enters_from_top_or_never():
    g = empty_grid()
    g[:, :, 0:2] = GROUND
    origin = np.array([[0.2, 0.2, 7.0]])  # above z = 5.4: outside the grid
    dirs = ray.generate_lidar_rays()
    geometry = ray.ray_geometry(origin, dirs)
    assert geometry.start[0, 2] >= OCC_GRID.shape[2]
    (hits,) = ray.cast_rays([g != FREE_INDEX], geometry, "cpu")
    steep = slice(0, 5 * 360)  # pitch <= -0.197 rad: reaches the ground within 37 m
    assert hits.hit[steep].all()
    assert (hits.voxel[steep, 2] == 1).all()
    up = dirs[:, 2] > 0
    np.testing.assert_array_equal(hits.distance[up], np.float32(-1) * np.float32(0.4))
    assert (hits.voxel[up] == 0).all() and not hits.hit[up].any()
    # steepest ring: reaches z = -0.2 (top of the ground) after 7.2 / sin(45 deg) metres, exits the voxel later
    first_ring = hits.distance[:360]
    top_of_ground = 7.2 * math.sqrt(2)
    assert np.all(first_ring >= top_of_ground - 1e-4) and np.all(first_ring <= top_of_ground + 0.4 * math.sqrt(3))


def test_fast_general_and_torch_paths_are_bit_identical():
    rng = np.random.default_rng(3)
    g = empty_grid()
    g[:, :, 0:2] = GROUND
    for _ in range(40):
        x, y = rng.integers(10, 185, 2)
        g[x : x + rng.integers(2, 12), y : y + rng.integers(2, 12), 2 : rng.integers(3, 12)] = rng.integers(0, 17)
    pred = np.where(rng.random(OCC_GRID.shape) < 0.002, CAR, g).astype(np.uint8)
    origins = np.array([[0.9, 0.0, 1.84], [-14.3, 3.1, 2.2]])
    geometry = ray.ray_geometry(origins, ray.generate_lidar_rays()[::3])
    grids = [g != FREE_INDEX, pred != FREE_INDEX]
    fast = ray.cast_rays(grids, geometry, "cpu")
    general = ray.cast_rays(grids, geometry, "cpu", force_general=True)
    # the torch implementation (what runs on CUDA), here on the CPU
    packed = ray._PaddedCodes.build(grids)
    t_flat, t_dist, t_hit = ray._traverse_torch(packed, geometry, 2, torch.device("cpu"))
    for k in range(2):
        np.testing.assert_array_equal(fast[k].voxel, general[k].voxel)
        np.testing.assert_array_equal(fast[k].distance, general[k].distance)
        np.testing.assert_array_equal(fast[k].hit, general[k].hit)
        np.testing.assert_array_equal(packed.unflatten(t_flat[k]), fast[k].voxel)
        np.testing.assert_array_equal((t_dist[k].astype(np.float32) * np.float32(0.4)), fast[k].distance)
        np.testing.assert_array_equal(t_hit[k], fast[k].hit)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_cpu():  # pragma: no cover - GPU machines only
    g = room()
    geometry = ray.ray_geometry(ROOM_ORIGINS, ray.generate_lidar_rays())
    cpu = ray.cast_rays([g != FREE_INDEX], geometry, "cpu")[0]
    gpu = ray.cast_rays([g != FREE_INDEX], geometry, "cuda")[0]
    np.testing.assert_array_equal(cpu.distance, gpu.distance)
    np.testing.assert_array_equal(cpu.voxel, gpu.voxel)


# ----------------------------------------------------------------------------------------------------------------
# RayIoU on analytic scenes
# ----------------------------------------------------------------------------------------------------------------


def _rayiou(pred, gt, origins=ROOM_ORIGINS, dirs=AXIS_DIRS):
    sample = ray.sample_rays(pred, gt, origins, directions=dirs, device="cpu")
    return sample, ray.rayiou_from_counts(ray.rayiou_counts(sample))


def _class_row(result, cls):
    return result.per_class[:, cls]


def test_rayiou_identical_room_is_perfect():
    sample, result = _rayiou(room(), room())
    assert sample.gt_label.size == 12
    np.testing.assert_allclose(sample.gt_distance, room_distances(), atol=2e-5)
    assert result.rayiou == 1.0 and result.per_threshold == (1.0, 1.0, 1.0)
    defined = ~np.isnan(result.per_class[0])
    assert set(np.flatnonzero(defined)) == {MANMADE, VEGETATION, BARRIER, GROUND}


def test_rayiou_shifted_wall_depends_on_threshold():
    # +x wall 3 voxels (1.2 m) closer in the prediction: right class, distance error 1.2 m on those rays
    sample, result = _rayiou(room(plus_x_ix=122), room())
    err = sample.l1_error[sample.gt_label == MANMADE]
    np.testing.assert_allclose(err, 1.2, atol=1e-4)
    np.testing.assert_array_equal(_class_row(result, MANMADE), [0.0, 1.0, 1.0])
    assert result.per_threshold == pytest.approx((0.75, 1.0, 1.0))
    assert result.rayiou == pytest.approx((0.75 + 1 + 1) / 3)


def test_rayiou_missing_object_scores_zero_for_it():
    sample, result = _rayiou(room(with_plus_y=False), room())
    missing = sample.gt_label == BARRIER
    assert (sample.pred_label[missing] == FREE_INDEX).all()  # the ray left the grid: the last voxel is free
    np.testing.assert_array_equal(_class_row(result, BARRIER), [0.0, 0.0, 0.0])
    assert result.rayiou == pytest.approx(0.75)


def test_rayiou_wrong_class_is_a_false_positive_of_the_predicted_class():
    _, result = _rayiou(room(plus_x_class=VEGETATION), room())
    np.testing.assert_array_equal(_class_row(result, MANMADE), [0.0, 0.0, 0.0])
    # vegetation: 3 GT rays (-x), 6 predicted (-x and +x), 3 true positives -> 3 / (3 + 6 - 3)
    np.testing.assert_allclose(_class_row(result, VEGETATION), 0.5)


def test_rayiou_all_free_ground_truth_has_no_rays():
    sample, result = _rayiou(room(), empty_grid())
    assert sample.gt_label.size == 0
    assert np.isnan(result.per_class).all() and math.isnan(result.rayiou)


def test_single_object_with_lidar_rays():
    gt = empty_grid()
    gt[112:122, 95:104, 2:7] = CAR  # a car 4.8..8.8 m ahead
    origins = np.array([[0.94, 0.0, 1.84]])
    dirs = ray.generate_lidar_rays()
    same, r_same = _rayiou(gt, gt, origins, dirs)
    assert same.gt_label.size > 100 and (same.gt_label == CAR).all()
    assert r_same.rayiou == 1.0
    _, r_missing = _rayiou(empty_grid(), gt, origins, dirs)
    assert r_missing.rayiou == 0.0
    shifted = np.roll(gt, 2, axis=0)  # 0.8 m farther away
    s_shift, r_shift = _rayiou(shifted, gt, origins, dirs)
    iou = _class_row(r_shift, CAR)
    # rays that hit the front 0.8 m of the GT car roof now fly past the predicted car: IoU < 1 at every threshold
    both = (s_shift.pred_label == CAR) & (s_shift.gt_label == CAR)
    n_gt, n_pred, n_both = (s_shift.gt_label == CAR).sum(), (s_shift.pred_label == CAR).sum(), both.sum()
    assert 0 < n_both < n_gt
    # where both hit the car, the predicted hit is farther by less than 4 m: every such ray is a TP at 4 m
    delta = s_shift.pred_distance[both] - s_shift.gt_distance[both]
    assert delta.min() >= -1e-4 and delta.max() < 4.0
    assert iou[2] == pytest.approx(n_both / (n_gt + n_pred - n_both))
    assert iou[0] <= iou[1] <= iou[2] < 1.0
    tp_1m = (both & (s_shift.l1_error < 1)).sum()
    assert iou[0] == pytest.approx(tp_1m / (n_gt + n_pred - tp_1m))


def test_counts_add_up_over_samples():
    a = ray.rayiou_counts(_rayiou(room(plus_x_ix=122), room())[0])
    b = ray.rayiou_counts(_rayiou(room(), room())[0])
    total = ray.RayIoUCounts().add(a).add(b)
    np.testing.assert_array_equal(total.gt, a.gt + b.gt)
    result = ray.rayiou_from_counts(total)
    # manmade@1: 3 TP (second sample) over 6 GT + 6 predicted rays
    assert result.per_class[0, MANMADE] == pytest.approx(3 / (6 + 6 - 3))


def _scalar_reference(occupied, origin_m, direction_f32):
    """One ray, written out step by step like the published kernel (Python floats are IEEE doubles)."""
    f32 = np.float32
    scale = float(f32(0.4))
    lower = [float(f32(v)) for v in OCC_GRID.lower]
    o = [float(f32((origin_m[k] - lower[k]) / scale)) for k in range(3)]
    e = [float(f32(((float(direction_f32[k]) + origin_m[k]) - lower[k]) / scale)) for k in range(3)]
    r = [e[k] - o[k] for k in range(3)]
    length = math.sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2])
    d = [r[k] / length for k in range(3)]
    step = [1 if d[k] >= 0 else -1 for k in range(3)]
    v = [int(o[k]) for k in range(3)]
    big = np.finfo(np.float64).max
    t_max = [((v[k] + (0 if step[k] < 0 else 1)) - o[k]) / d[k] if d[k] != 0 else big for k in range(3)]
    t_delta = [step[k] / d[k] if d[k] != 0 else big for k in range(3)]
    path = []
    while True:
        inside = all(0 <= v[k] < OCC_GRID.shape[k] for k in range(3))
        if not inside and path:
            break
        if t_max[0] < t_max[1]:
            axis = 0 if t_max[0] < t_max[2] else 2
        else:
            axis = 1 if t_max[1] < t_max[2] else 2
        if inside:
            path.append((tuple(v), t_max[axis]))
        v[axis] += step[axis]
        t_max[axis] += t_delta[axis]
    for voxel, dist in path:
        if occupied[voxel]:
            return voxel, f32(f32(dist) * f32(0.4))
    return path[-1][0], f32(f32(path[-1][1]) * f32(0.4))


def test_distances_are_bit_identical_to_a_scalar_restatement_of_the_kernel():
    rng = np.random.default_rng(11)
    g = empty_grid()
    g[:, :, 0:2] = GROUND
    for _ in range(30):
        x, y = rng.integers(10, 185, 2)
        g[x : x + rng.integers(2, 12), y : y + rng.integers(2, 12), 2 : rng.integers(3, 14)] = MANMADE
    occupied = g != FREE_INDEX
    origins = np.array([[0.9437, 0.0031, 1.8402], [-13.27183, 2.91177, 2.0471]])
    dirs = ray.generate_lidar_rays()[::47]
    hits = ray.cast_rays([occupied], ray.ray_geometry(origins, dirs), "cpu")[0]
    for k, origin in enumerate(origins):
        for r, direction in enumerate(dirs):
            voxel, dist = _scalar_reference(occupied, origin, direction)
            i = k * len(dirs) + r
            assert tuple(hits.voxel[i]) == voxel
            assert hits.distance[i] == dist  # bit-identical float32
