"""Ray-based occupancy metrics as defined by SparseOcc: RayIoU and RayPQ.

Definitions reproduced (facts from the published evaluation; see docs/evaluation.md):

* Rays: a lidar-like fan of 39 pitch angles x 360 azimuths (14,040 unit directions per origin).
* Origins: up to 8 lidar positions of the scene's keyframes in the evaluated sample's ego frame
  (``subsample_origins``; the poses themselves come from nuscenes-devkit in ``flashocc_ros.metrics.evaluation``).
* Casting: Amanatides-Woo voxel traversal in voxel units from each origin. A ray stops at the first voxel whose
  label is not free; its distance is the ray parameter at which it *leaves* that voxel (x 0.4 m), and the label /
  instance is read there. A ray that hits nothing reports the last voxel inside the grid and its exit distance.
  The arithmetic follows the reference kernel step by step (float32 inputs, float64 traversal, float32 output),
  so distances are bit-identical, including its tie-breaking between axes.
* RayIoU: rays whose ground-truth hit is free are dropped; a ray is a true positive of class c at threshold t when
  both hits have class c and |d_pred - d_gt| < t; IoU per class over all rays of all samples; RayIoU is the mean over
  the 17 non-free classes and the thresholds 1, 2, 4 m.
* RayPQ: segments are (class, instance) pairs along the rays; ground-truth thing classes keep their instances, other
  classes form one segment per class; a predicted and a ground-truth segment match when the IoU of their rays with
  distance error < t exceeds 0.5; only segments with >= 10 rays count as FP / FN; PQ = SQ * RQ per class and
  threshold, NaN where a class has no TP, FP or FN; RayPQ = mean over the non-NaN entries.

The traversal is vectorised over all rays of a sample (torch, on CUDA when available, else CPU); no compiled
extension is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from flashocc_ros.config import FREE_INDEX, NUM_CLASSES, OCC_GRID, RAYPQ_THING_CLASS_INDICES

RAY_THRESHOLDS_M: tuple[float, ...] = (1.0, 2.0, 4.0)
MAX_ORIGINS = 8
ORIGIN_XY_LIMIT_M = 39.0  # origins farther than this from the ego (|x| or |y|) are not used
MIN_SEGMENT_RAYS = 10  # RayPQ: smaller unmatched segments are neither FP nor FN
RAYS_PER_ORIGIN = 14040
_MAX_TRAVERSAL_STEPS = 1000  # reference kernel's step limit (only matters for origins outside the grid)
_DBL_MAX = float(np.finfo(np.float64).max)
# The reference converts metres to voxel units with float32 tensors: offset = grid lower corner, scale = 0.4 (f32).
_VOXEL_SCALE = float(np.float32(OCC_GRID.voxel_size))
_DIST_SCALE = np.float32(OCC_GRID.voxel_size)


# ----------------------------------------------------------------------------------------------------------------
# Ray set and origins
# ----------------------------------------------------------------------------------------------------------------


def lidar_pitch_angles() -> np.ndarray:
    """The 39 pitch angles (radians, ascending) of the SparseOcc lidar model.

    Ten angles -(pi/2 - atan(k)) for k = 1..10, then continued with the last spacing until above 0.21 rad
    (the top of the nuScenes lidar's field of view). Accumulated in Python floats, as in the reference.
    """
    pitches = [-(math.pi / 2 - math.atan(k + 1)) for k in range(10)]
    while pitches[-1] < 0.21:
        pitches.append(pitches[-1] + (pitches[-1] - pitches[-2]))
    return np.array(pitches, dtype=np.float64)


def generate_lidar_rays() -> np.ndarray:
    """Unit ray directions (14040, 3) float32, pitch-major, azimuth 0..359 degrees in 1 degree steps."""
    pitch = lidar_pitch_angles()[:, None]
    azimuth = np.deg2rad(np.arange(0, 360, 1))[None, :]
    dirs = np.stack(
        [
            np.cos(pitch) * np.cos(azimuth),
            np.cos(pitch) * np.sin(azimuth),
            np.broadcast_to(np.sin(pitch), (pitch.shape[0], azimuth.shape[1])),
        ],
        axis=-1,
    )
    return dirs.reshape(-1, 3).astype(np.float32)


def subsample_origins(candidates: np.ndarray) -> np.ndarray:
    """Keep origins with |x| < 39 m and |y| < 39 m (in scene order), then at most 8 evenly spread ones.

    ``candidates`` (N, 3) float64, ego-frame lidar positions of all keyframes of the scene in time order.
    Returns (T, 3) float64, 1 <= T <= 8 when the sample's own origin is among the candidates.
    """
    candidates = np.asarray(candidates, dtype=np.float64).reshape(-1, 3)
    keep = (np.abs(candidates[:, 0]) < ORIGIN_XY_LIMIT_M) & (np.abs(candidates[:, 1]) < ORIGIN_XY_LIMIT_M)
    kept = candidates[keep]
    if len(kept) > MAX_ORIGINS:
        kept = kept[np.round(np.linspace(0, len(kept) - 1, MAX_ORIGINS)).astype(np.int64)]
    return kept


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# ----------------------------------------------------------------------------------------------------------------
# Voxel traversal
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RayHits:
    """Result of casting R rays into one grid."""

    distance: np.ndarray  # (R,) float32, metres; -0.4 where a ray never entered the grid
    voxel: np.ndarray  # (R, 3) int64 (ix, iy, iz) of the hit (or last inside) voxel; (0, 0, 0) if never inside
    hit: np.ndarray  # (R,) bool, True where the ray stopped at an occupied voxel


@dataclass
class RayGeometry:
    """Per-ray traversal constants in voxel units (float64, derived from float32 origin / end points)."""

    start: np.ndarray  # (R, 3) int64 voxel of the origin (C-style truncation)
    t_max: np.ndarray  # (R, 3) float64 ray parameter of the first boundary crossing per axis
    t_delta: np.ndarray  # (R, 3) float64 parameter step between crossings per axis
    step: np.ndarray  # (R, 3) int64 +1 / -1

    def __len__(self) -> int:
        return self.start.shape[0]

    def subset(self, index: np.ndarray) -> RayGeometry:
        return RayGeometry(self.start[index], self.t_max[index], self.t_delta[index], self.step[index])


def ray_geometry(origins_m: np.ndarray, directions: np.ndarray) -> RayGeometry:
    """Traversal constants for every (origin, direction) pair, origin-major: ray k*R + r = origin k, direction r.

    Mirrors the reference data flow: metres -> voxel units in float64 with the float32 grid offset / scale,
    rounded to float32 (origin and the end point origin + direction), then all traversal math in float64.
    """
    origins_m = np.asarray(origins_m, dtype=np.float64).reshape(-1, 3)
    directions = np.asarray(directions, dtype=np.float32).reshape(-1, 3)
    lower = np.asarray(OCC_GRID.lower, dtype=np.float32).astype(np.float64)
    origin_v = ((origins_m - lower) / _VOXEL_SCALE).astype(np.float32).astype(np.float64)  # (T, 3)
    end_v = (((directions.astype(np.float64)[None, :, :] + origins_m[:, None, :]) - lower) / _VOXEL_SCALE).astype(
        np.float32
    )
    end_v = end_v.astype(np.float64)  # (T, R, 3)
    rel = end_v - origin_v[:, None, :]
    length = np.sqrt(rel[..., 0] * rel[..., 0] + rel[..., 1] * rel[..., 1] + rel[..., 2] * rel[..., 2])
    direction = rel / length[..., None]
    step = np.where(direction >= 0, 1, -1).astype(np.int64)
    start = np.trunc(origin_v).astype(np.int64)  # C int() conversion truncates toward zero
    start = np.broadcast_to(start[:, None, :], direction.shape)
    boundary = (start + (step > 0)).astype(np.float64)
    nonzero = direction != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t_max = np.where(nonzero, (boundary - origin_v[:, None, :]) / direction, _DBL_MAX)
        t_delta = np.where(nonzero, step.astype(np.float64) / direction, _DBL_MAX)
    return RayGeometry(
        start=start.reshape(-1, 3).copy(),
        t_max=t_max.reshape(-1, 3),
        t_delta=t_delta.reshape(-1, 3),
        step=step.reshape(-1, 3),
    )


def _choose_axis(tx, ty, tz):
    """Axis the reference leaves the voxel through (numpy arrays or torch tensors).

    x if tx < ty and tx < tz; else y if (not tx < ty) and ty < tz; else z.
    """
    x_lt_y = tx < ty
    pick_x = x_lt_y & (tx < tz)
    pick_y = ~x_lt_y & (ty < tz)
    return pick_x, pick_y


_OUTSIDE = 1 << 7  # code of the one-voxel border around the padded grid; bits 0..6 = "occupied in grid g"
_CHUNK_RAYS_CPU = 32768  # rays traversed together on the CPU (bounded working set, few numpy calls)


@dataclass
class _PaddedCodes:
    """Occupancy of up to 7 grids packed into one byte per voxel, with an 'outside' border, flattened."""

    codes: np.ndarray  # (202 * 202 * 18,) uint8
    strides: np.ndarray  # (3,) int64

    @staticmethod
    def build(grids: Sequence[np.ndarray]) -> _PaddedCodes:
        padded = tuple(s + 2 for s in OCC_GRID.shape)
        codes = np.full(padded, _OUTSIDE, dtype=np.uint8)
        inner = np.zeros(OCC_GRID.shape, dtype=np.uint8)
        for g, occupied in enumerate(grids):
            inner |= occupied.astype(np.uint8) << g
        codes[1:-1, 1:-1, 1:-1] = inner
        strides = np.array([padded[1] * padded[2], padded[2], 1], dtype=np.int64)
        return _PaddedCodes(codes.reshape(-1), strides)

    def unflatten(self, flat: np.ndarray) -> np.ndarray:
        py, pz = self.strides[0] // self.strides[1], self.strides[1]
        return np.stack([flat // (py * pz), (flat // pz) % py, flat % pz], axis=-1) - 1


def _traverse_numpy(
    packed: _PaddedCodes, geometry: RayGeometry, num_grids: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lock-step traversal of all grids for rays starting inside the grid; numpy, in cache-sized chunks.

    Each step leaves the current voxel through the axis picked by the reference rule; a grid whose bit is set in
    the voxel's code records (voxel, exit distance) and stops waiting; a ray whose next voxel is the border
    records its current voxel for every grid still waiting. Finished rays are parked on an extra free voxel with
    a zero step and removed in batches. Returns per grid: flat padded index, exit distance (voxel units,
    float64), hit flag.
    """
    park = packed.codes.size
    codes = np.append(packed.codes, np.uint8(0))  # the parking voxel: free, never the border
    n = len(geometry)
    out_flat = np.zeros((num_grids, n), dtype=np.int64)
    out_dist = np.zeros((num_grids, n), dtype=np.float64)
    out_hit = np.zeros((num_grids, n), dtype=bool)
    all_bits = np.uint8((1 << num_grids) - 1)
    flat_all = (geometry.start + 1) @ packed.strides
    step_all = geometry.step * packed.strides
    for begin in range(0, n, _CHUNK_RAYS_CPU):
        end = min(n, begin + _CHUNK_RAYS_CPU)
        t_max = np.ascontiguousarray(geometry.t_max[begin:end].T)  # (3, m), rows x / y / z
        t_delta = np.ascontiguousarray(geometry.t_delta[begin:end].T)
        flat_step = np.ascontiguousarray(step_all[begin:end].T)
        flat = flat_all[begin:end]
        ray_id = np.arange(begin, end)
        waiting = np.full(end - begin, all_bits, dtype=np.uint8)
        code = codes[flat]
        m, parked = ray_id.size, 0
        lane_x = np.arange(m)
        lane_y, lane_z = lane_x + m, lane_x + 2 * m
        while m:
            tx, ty, tz = t_max[0], t_max[1], t_max[2]
            x_lt_y = tx < ty
            pick_x = x_lt_y & (tx < tz)
            pick_y = np.greater(ty < tz, x_lt_y)  # (not x_lt_y) and ty < tz
            lin = np.where(pick_x, lane_x, np.where(pick_y, lane_y, lane_z))
            t_flat, d_flat = t_max.reshape(-1), t_delta.reshape(-1)
            dist = t_flat[lin]
            t_flat[lin] = dist + d_flat[lin]
            next_flat = flat + flat_step.reshape(-1)[lin]
            next_code = codes[next_flat]
            hit_bits = code & waiting
            event = np.flatnonzero(hit_bits | (next_code & _OUTSIDE))
            if event.size:
                e_hit, e_wait, e_ray = hit_bits[event], waiting[event], ray_id[event]
                e_leave = next_code[event] == _OUTSIDE
                e_flat, e_dist = flat[event], dist[event]
                for g in range(num_grids):
                    bit = np.uint8(1 << g)
                    hit = (e_hit & bit) != 0
                    record = hit | (e_leave & ((e_wait & bit) != 0))
                    rays = e_ray[record]
                    out_flat[g, rays], out_dist[g, rays], out_hit[g, rays] = e_flat[record], e_dist[record], hit[record]
                still = np.where(e_leave, np.uint8(0), e_wait & ~e_hit)
                waiting[event] = still
                finished = event[still == 0]
                if finished.size:
                    next_flat[finished] = park
                    next_code[finished] = 0
                    flat_step[:, finished] = 0
                    parked += finished.size
            flat, code = next_flat, next_code
            if parked * 4 > m:
                keep = np.flatnonzero(waiting)
                m, parked = keep.size, 0
                lane_x = np.arange(m)
                lane_y, lane_z = lane_x + m, lane_x + 2 * m
                t_max, t_delta = np.take(t_max, keep, axis=1), np.take(t_delta, keep, axis=1)
                flat_step = np.take(flat_step, keep, axis=1)
                flat, code, ray_id, waiting = flat[keep], code[keep], ray_id[keep], waiting[keep]
    return out_flat, out_dist, out_hit


def _traverse_torch(
    packed: _PaddedCodes, geometry: RayGeometry, num_grids: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same lock-step traversal with torch tensors on ``device`` (used on CUDA; all rays at once)."""
    codes = torch.from_numpy(packed.codes).to(device)
    n = len(geometry)
    out_flat = torch.zeros((num_grids, n), dtype=torch.int64, device=device)
    out_dist = torch.zeros((num_grids, n), dtype=torch.float64, device=device)
    out_hit = torch.zeros((num_grids, n), dtype=torch.bool, device=device)
    flat = torch.from_numpy((geometry.start + 1) @ packed.strides).to(device)
    t_max = torch.from_numpy(np.ascontiguousarray(geometry.t_max.T)).to(device)
    t_delta = torch.from_numpy(np.ascontiguousarray(geometry.t_delta.T)).to(device)
    flat_step = torch.from_numpy(np.ascontiguousarray((geometry.step * packed.strides).T)).to(device)
    ray_id = torch.arange(n, device=device)
    waiting = torch.full((n,), (1 << num_grids) - 1, dtype=torch.uint8, device=device)
    code = codes[flat]
    m = n
    while m:
        lanes = torch.arange(m, device=device)
        tx, ty, tz = t_max[0], t_max[1], t_max[2]
        x_lt_y = tx < ty
        pick_x = x_lt_y & (tx < tz)
        pick_y = ~x_lt_y & (ty < tz)
        lin = torch.where(pick_x, lanes, torch.where(pick_y, lanes + m, lanes + 2 * m))
        t_flat, d_flat = t_max.view(-1), t_delta.view(-1)
        dist = t_flat[lin]
        t_flat[lin] = dist + d_flat[lin]
        next_flat = flat + flat_step.view(-1)[lin]
        next_code = codes[next_flat]
        hit_bits = code & waiting
        leaving = next_code == _OUTSIDE
        for g in range(num_grids):
            bit = 1 << g
            hit = (hit_bits & bit) != 0
            record = hit | (leaving & ((waiting & bit) != 0))
            rays = ray_id[record]
            out_flat[g, rays], out_dist[g, rays], out_hit[g, rays] = flat[record], dist[record], hit[record]
        waiting = waiting & ~code
        keep = ((waiting != 0) & ~leaving).nonzero().squeeze(1)
        m = int(keep.numel())
        t_max, t_delta, flat_step = t_max[:, keep], t_delta[:, keep], flat_step[:, keep]
        flat, code, ray_id, waiting = next_flat[keep], next_code[keep], ray_id[keep], waiting[keep]
    return out_flat.cpu().numpy(), out_dist.cpu().numpy(), out_hit.cpu().numpy()


def _traverse_general(occupied: np.ndarray, geometry: RayGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Traversal of one grid for any origin (also outside the grid), with the reference's bookkeeping.

    Returns (voxel (R, 3), exit distance in voxel units, hit flag); distance -1 and voxel (0, 0, 0) when a ray never
    enters the grid, as in the reference kernel. Slower than the padded lock-step path; used for the rare origins
    whose voxel is outside the grid (large height differences within a scene) and as a cross-check in tests.
    """
    shape = np.array(OCC_GRID.shape)
    n = len(geometry)
    voxel = geometry.start.copy()
    t_max = geometry.t_max.copy()
    out_voxel = np.zeros((n, 3), dtype=np.int64)
    out_dist = np.full(n, -1.0)
    out_hit = np.zeros(n, dtype=bool)
    was_inside = np.zeros(n, dtype=bool)
    last_voxel = np.zeros((n, 3), dtype=np.int64)
    last_dist = np.zeros(n)
    active = np.arange(n)
    for _ in range(_MAX_TRAVERSAL_STEPS + 1):
        if active.size == 0:
            break
        v = voxel[active]
        inside = np.all((v >= 0) & (v < shape), axis=1)
        leaving = ~inside & was_inside[active]
        done = active[leaving]
        out_voxel[done], out_dist[done] = last_voxel[done], last_dist[done]
        tm = t_max[active]
        pick_x, pick_y = _choose_axis(tm[:, 0], tm[:, 1], tm[:, 2])
        axis = np.where(pick_x, 0, np.where(pick_y, 1, 2))
        dist = tm[np.arange(active.size), axis]
        vin = np.where(inside[:, None], v, 0)
        occ = inside & occupied[vin[:, 0], vin[:, 1], vin[:, 2]]
        hit_rays = active[occ]
        out_voxel[hit_rays], out_dist[hit_rays], out_hit[hit_rays] = v[occ], dist[occ], True
        upd = active[inside]
        was_inside[upd] = True
        last_voxel[upd], last_dist[upd] = v[inside], dist[inside]
        voxel[active, axis] += geometry.step[active, axis]
        t_max[active, axis] += geometry.t_delta[active, axis]
        active = active[~(leaving | occ)]
    # rays cut by the step limit keep the last inside voxel (or nothing if they never entered)
    cut = active[was_inside[active]]
    out_voxel[cut], out_dist[cut] = last_voxel[cut], last_dist[cut]
    return out_voxel, out_dist, out_hit


def cast_rays(
    grids: Sequence[np.ndarray],
    geometry: RayGeometry,
    device: torch.device | str | None = None,
    force_general: bool = False,
) -> list[RayHits]:
    """Cast every ray of ``geometry`` into each boolean grid (200, 200, 16) [ix, iy, iz] of ``grids``.

    All grids share one traversal (the ray continues until every grid has its hit). ``device``: "cpu" (numpy),
    a torch device such as "cuda", or None for CUDA when available. ``force_general`` routes every ray through
    the slow general path (tests).
    """
    grids = [np.asarray(g, dtype=bool) for g in grids]
    for g in grids:
        if g.shape != OCC_GRID.shape:
            raise ValueError(f"occupancy grid has shape {g.shape}, expected {OCC_GRID.shape}")
    if not 1 <= len(grids) <= 7:
        raise ValueError(f"cast_rays takes 1..7 grids, got {len(grids)}")
    device = torch.device(device) if device is not None else default_device()
    n, num_grids = len(geometry), len(grids)
    distance = np.full((num_grids, n), -1.0, dtype=np.float64)
    voxel = np.zeros((num_grids, n, 3), dtype=np.int64)
    hit = np.zeros((num_grids, n), dtype=bool)
    inside = np.all((geometry.start >= 0) & (geometry.start < np.array(OCC_GRID.shape)), axis=1)
    if force_general:
        inside[:] = False
    fast = np.flatnonzero(inside)
    if fast.size:
        packed = _PaddedCodes.build(grids)
        if device.type == "cpu":
            flat, dist, fhit = _traverse_numpy(packed, geometry.subset(fast), num_grids)
        else:
            flat, dist, fhit = _traverse_torch(packed, geometry.subset(fast), num_grids, device)
        distance[:, fast], voxel[:, fast], hit[:, fast] = dist, packed.unflatten(flat), fhit
    slow = np.flatnonzero(~inside)
    if slow.size:
        sub = geometry.subset(slow)
        for g, occupied in enumerate(grids):
            voxel[g, slow], distance[g, slow], hit[g, slow] = _traverse_general(occupied, sub)
    # The reference stores the float64 distance into a float32 tensor, then scales by 0.4 in float32.
    scaled = distance.astype(np.float32) * _DIST_SCALE
    return [RayHits(distance=scaled[g], voxel=voxel[g], hit=hit[g]) for g in range(num_grids)]


# ----------------------------------------------------------------------------------------------------------------
# Per-sample ray samples
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RaySample:
    """Rays of one sample whose ground-truth hit is not free (the rays every ray metric is computed on)."""

    gt_label: np.ndarray  # (N,) int64
    pred_label: np.ndarray  # (N,) int64
    gt_distance: np.ndarray  # (N,) float32 metres
    pred_distance: np.ndarray  # (N,) float32 metres
    gt_instance: np.ndarray | None = None  # (N,) int64
    pred_instance: np.ndarray | None = None  # (N,) int64

    @property
    def l1_error(self) -> np.ndarray:
        return np.abs(self.pred_distance - self.gt_distance)


def sample_rays(
    pred_semantic: np.ndarray,
    gt_semantic: np.ndarray,
    origins_m: np.ndarray,
    pred_instance: np.ndarray | None = None,
    gt_instance: np.ndarray | None = None,
    directions: np.ndarray | None = None,
    device: torch.device | str | None = None,
) -> RaySample:
    """Cast the lidar rays from every origin into ground truth and prediction and keep the non-free GT rays.

    Ground truth and prediction share one traversal per ray (numpy on the CPU, torch on CUDA).
    """
    directions = generate_lidar_rays() if directions is None else directions
    geometry = ray_geometry(origins_m, directions)
    gt_hits, pred_hits = cast_rays([gt_semantic != FREE_INDEX, pred_semantic != FREE_INDEX], geometry, device)
    gv, pv = gt_hits.voxel, pred_hits.voxel
    gt_label = gt_semantic[gv[:, 0], gv[:, 1], gv[:, 2]].astype(np.int64)
    valid = gt_label != FREE_INDEX
    gv, pv = gv[valid], pv[valid]
    sample = RaySample(
        gt_label=gt_label[valid],
        pred_label=pred_semantic[pv[:, 0], pv[:, 1], pv[:, 2]].astype(np.int64),
        gt_distance=gt_hits.distance[valid],
        pred_distance=pred_hits.distance[valid],
    )
    if pred_instance is not None and gt_instance is not None:
        sample.gt_instance = _as_float32_id(gt_instance[gv[:, 0], gv[:, 1], gv[:, 2]])
        sample.pred_instance = _as_float32_id(pred_instance[pv[:, 0], pv[:, 1], pv[:, 2]])
    return sample


def _as_float32_id(values: np.ndarray) -> np.ndarray:
    """Instance ids pass through a float32 tensor in the reference; keep that rounding (exact below 2**24)."""
    return values.astype(np.float32).astype(np.int32).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# RayIoU
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RayIoUCounts:
    """Ray counts of one or more samples (integers: summing them in any order gives the same result)."""

    gt: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, dtype=np.int64))
    pred: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, dtype=np.int64))
    tp: np.ndarray = field(default_factory=lambda: np.zeros((len(RAY_THRESHOLDS_M), NUM_CLASSES), dtype=np.int64))

    def add(self, other: RayIoUCounts) -> RayIoUCounts:
        self.gt += other.gt
        self.pred += other.pred
        self.tp += other.tp
        return self


def rayiou_counts(sample: RaySample) -> RayIoUCounts:
    counts = RayIoUCounts()
    counts.gt += np.bincount(sample.gt_label, minlength=NUM_CLASSES)[:NUM_CLASSES]
    counts.pred += np.bincount(sample.pred_label[sample.pred_label < NUM_CLASSES], minlength=NUM_CLASSES)
    same = sample.pred_label == sample.gt_label
    l1 = sample.l1_error
    for j, threshold in enumerate(RAY_THRESHOLDS_M):
        tp = same & (l1 < threshold)
        counts.tp[j] += np.bincount(sample.gt_label[tp], minlength=NUM_CLASSES)[:NUM_CLASSES]
    return counts


@dataclass
class RayIoUResult:
    per_class: np.ndarray  # (3, 17) float64 IoU per threshold and non-free class (NaN where undefined)
    rayiou: float  # mean over all finite entries
    per_threshold: tuple[float, ...]  # RayIoU@1, @2, @4

    def as_dict(self) -> dict:
        out = {"RayIoU": self.rayiou}
        for t, v in zip(RAY_THRESHOLDS_M, self.per_threshold):
            out[f"RayIoU@{t:g}"] = v
        return out


def rayiou_from_counts(counts: RayIoUCounts) -> RayIoUResult:
    gt = counts.gt.astype(np.float64)
    pred = counts.pred.astype(np.float64)
    tp = counts.tp.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt + pred - tp)
    iou = iou[:, :FREE_INDEX]
    with np.errstate(invalid="ignore"):
        per_threshold = tuple(float(_nanmean(iou[j])) for j in range(len(RAY_THRESHOLDS_M)))
        return RayIoUResult(per_class=iou, rayiou=float(_nanmean(iou)), per_threshold=per_threshold)


def _nanmean(values: np.ndarray) -> float:
    finite = ~np.isnan(values)
    return float(np.nanmean(values)) if finite.any() else float("nan")


# ----------------------------------------------------------------------------------------------------------------
# RayPQ
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RayPQCounts:
    """Panoptic counts per threshold and class. ``iou_sum`` is floating point: add samples in a fixed order."""

    tp: np.ndarray = field(default_factory=lambda: np.zeros((len(RAY_THRESHOLDS_M), NUM_CLASSES), dtype=np.int64))
    fp: np.ndarray = field(default_factory=lambda: np.zeros((len(RAY_THRESHOLDS_M), NUM_CLASSES), dtype=np.int64))
    fn: np.ndarray = field(default_factory=lambda: np.zeros((len(RAY_THRESHOLDS_M), NUM_CLASSES), dtype=np.int64))
    iou_sum: np.ndarray = field(
        default_factory=lambda: np.zeros((len(RAY_THRESHOLDS_M), NUM_CLASSES), dtype=np.float64)
    )

    def add(self, other: RayPQCounts) -> RayPQCounts:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou_sum += other.iou_sum
        return self


def ground_truth_segments(gt_label: np.ndarray, gt_instance: np.ndarray) -> np.ndarray:
    """Segment id per ray (>= 1), numbered like the reference so that per-class orderings agree.

    Walking the classes 0..16 present among the rays: a thing class gets one id per ground-truth instance whose
    rays all carry that class (ascending instance id); any other class gets one id for all its rays. Rays of a
    thing class without such an instance share id 1 ("no instance"); numbered ids start at 2.
    """
    segment = np.zeros(gt_label.shape, dtype=np.int64)
    has_inst = gt_instance > 0
    inst_ids, inverse = np.unique(gt_instance[has_inst], return_inverse=True)
    labels = gt_label[has_inst]
    lo = np.full(inst_ids.size, NUM_CLASSES, dtype=np.int64)
    hi = np.full(inst_ids.size, -1, dtype=np.int64)
    np.minimum.at(lo, inverse, labels)
    np.maximum.at(hi, inverse, labels)
    inst_class = np.where(lo == hi, lo, FREE_INDEX)  # instances spanning several classes are not used
    inst_new = np.zeros(inst_ids.size, dtype=np.int64)
    next_id = 1
    present = np.bincount(gt_label, minlength=NUM_CLASSES)
    for cls in range(FREE_INDEX):
        if present[cls] == 0:
            continue
        if cls in RAYPQ_THING_CLASS_INDICES:
            members = np.flatnonzero(inst_class == cls)
            inst_new[members] = next_id + np.arange(members.size)
            next_id += members.size
        else:
            segment[gt_label == cls] = next_id
            next_id += 1
    thing_rays = np.flatnonzero(has_inst)
    mapped = inst_new[inverse]
    segment[thing_rays[mapped > 0]] = mapped[mapped > 0]
    return segment + 1


_PAIR_KEY = 1 << 32


def raypq_counts(sample: RaySample) -> RayPQCounts:
    """RayPQ counts of one sample (needs instance ids on the sample)."""
    if sample.gt_instance is None or sample.pred_instance is None:
        raise ValueError("RayPQ needs predicted and ground-truth instance ids")
    counts = RayPQCounts()
    if sample.gt_label.size == 0:
        return counts
    gt_seg = ground_truth_segments(sample.gt_label, sample.gt_instance)
    pred_seg = sample.pred_instance + 1
    if pred_seg.size and (pred_seg.max() >= _PAIR_KEY or pred_seg.min() < 0):
        raise ValueError(f"predicted instance ids must lie in [-1, {_PAIR_KEY - 1}), got {pred_seg.min() - 1}..")
    l1 = sample.l1_error
    for cls in range(FREE_INDEX):
        in_pred = (sample.pred_label == cls) & (pred_seg > 0)
        in_gt = sample.gt_label == cls
        pred_ids, pred_area = np.unique(pred_seg[in_pred], return_counts=True)
        gt_ids, gt_area = np.unique(gt_seg[in_gt], return_counts=True)
        if pred_ids.size == 0 and gt_ids.size == 0:
            continue
        both = in_pred & in_gt
        for j, threshold in enumerate(RAY_THRESHOLDS_M):
            pair_rays = both & (l1 < threshold)
            # sorted by (gt, pred) like the reference's key pred + 2**16 * gt (exact for any id below 2**32)
            keys, inter = np.unique(gt_seg[pair_rays] * _PAIR_KEY + pred_seg[pair_rays], return_counts=True)
            matched_gt = np.zeros(gt_ids.size, dtype=bool)
            matched_pred = np.zeros(pred_ids.size, dtype=bool)
            if keys.size:
                gi = np.searchsorted(gt_ids, keys // _PAIR_KEY)
                pi = np.searchsorted(pred_ids, keys % _PAIR_KEY)
                union = gt_area[gi] + pred_area[pi] - inter
                iou = inter.astype(np.float64) / union.astype(np.float64)
                is_tp = iou > 0.5
                counts.tp[j, cls] += int(is_tp.sum())
                counts.iou_sum[j, cls] += np.sum(iou[is_tp])
                matched_gt[gi[is_tp]] = True
                matched_pred[pi[is_tp]] = True
            counts.fn[j, cls] += int(np.sum((gt_area >= MIN_SEGMENT_RAYS) & ~matched_gt))
            counts.fp[j, cls] += int(np.sum((pred_area >= MIN_SEGMENT_RAYS) & ~matched_pred))
    return counts


@dataclass
class RayPQResult:
    per_class: np.ndarray  # (3, 17) float64 PQ per threshold and non-free class (NaN where no TP/FP/FN)
    raypq: float
    per_threshold: tuple[float, ...]

    def as_dict(self) -> dict:
        out = {"RayPQ": self.raypq}
        for t, v in zip(RAY_THRESHOLDS_M, self.per_threshold):
            out[f"RayPQ@{t:g}"] = v
        return out


_PQ_EPS = 1e-5


def raypq_from_counts(counts: RayPQCounts) -> RayPQResult:
    tp = counts.tp.astype(np.float64)
    sq = counts.iou_sum / np.maximum(tp, _PQ_EPS)
    rq = tp / np.maximum(tp + 0.5 * counts.fp + 0.5 * counts.fn, _PQ_EPS)
    pq = sq * rq
    pq[(counts.tp + counts.fp + counts.fn) == 0] = np.nan
    pq = pq[:, :FREE_INDEX]
    per_threshold = tuple(_nanmean(pq[j]) for j in range(len(RAY_THRESHOLDS_M)))
    return RayPQResult(per_class=pq, raypq=_nanmean(pq), per_threshold=per_threshold)
