"""Panoptic occupancy post-processing: give every "thing" voxel the id of the nearest instance centre of its class.

Panoptic-FlashOcc (paper §3.4, Algorithm 1) turns a semantic grid plus the decoded instance centres of its
centerness head into a panoptic grid without learned parameters: every voxel of a thing class takes the id of the
nearest centre of the same class. This module does that in torch, vectorized, on CPU or CUDA (no extension, no
ROS; on the CPU the grid-sized nonzero of a dense grid goes through numpy on a zero-copy view, see `_grid_nonzero`
below), in two modes (details and the full list of differences: docs/panoptic.md):

* ``"official"`` reproduces the official code's default (CUDA-kernel) path bit for bit: its hard-coded class tables
  (written for another detection-class order), centres truncated to integer voxel indices in float32, integer
  squared distances with the first strictly smallest centre in score order winning, ids ``18 + argsort(cls)[j]``
  and barrier / traffic_cone voxels erased to 0 when a centre of the mis-mapped head class exists.
* ``"corrected"`` pairs each occupancy thing class with the head class of the same name, measures distances in
  metres from voxel centres to the continuous decoded centres, never erases voxels and numbers the instances
  ``18, 19, ...`` in score order.

Why hand-written: no library offers a class-aware nearest-centre assignment with the official tie-breaking; the
search is exact and pruned (see `_assign_pruned`) so that it is fast on CPU without a voxels x all-centres tensor.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flashocc_ros.config import (
    FIRST_INSTANCE_ID,
    HEAD_CLASS_NAMES,
    HEAD_TO_OCC,
    NUM_CLASSES,
    OCC_GRID,
    PANO_MODES,
    GridSpec,
)

NUM_HEAD_CLASSES = len(HEAD_CLASS_NAMES)  # 10

# Official hard-coded tables (SPEC §9). They were written for the detection order car, truck, trailer, bus,
# construction_vehicle, bicycle, motorcycle, pedestrian, traffic_cone, barrier but are applied to the head's real
# order (HEAD_CLASS_NAMES); reproduced as coded for parity.
OFFICIAL_HEAD_TO_OCC: tuple[int, ...] = (4, 10, 9, 3, 5, 2, 6, 7, 8, 1)
# Index = occupancy class 0..10; -1 = no head class (barrier and traffic_cone voxels can then only be erased).
OFFICIAL_OCC_TO_HEAD: tuple[int, ...] = (-1, -1, 5, 3, 0, 4, 6, 7, -1, 2, 1)

STRATEGIES = ("auto", "pruned", "dense")
# Upper bound on the elements of one (voxels x candidate centres) block; blocks are processed in chunks.
DEFAULT_BLOCK_ELEMENTS = 1 << 22
# Official mode computes integer squared distances in float32; they are exact while every |coordinate| stays well
# below this bound (decoded centres are limited to +-61.2 m by the decoder).
MAX_ABS_CENTER_M = 500.0


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CenterTensors:
    """Instance centres as torch tensors: xyz (K,3) float32 metres, score (K,) float32, label (K,) int64 head
    class (HEAD_CLASS_NAMES order). Any object with `.xyz`, `.score`, `.label` (e.g.
    flashocc_ros.network.centers.Centers) converts to this with `center_tensors`."""

    xyz: torch.Tensor
    score: torch.Tensor
    label: torch.Tensor

    def __len__(self) -> int:
        return int(self.score.shape[0])

    def select(self, keep: torch.Tensor) -> CenterTensors:
        return CenterTensors(self.xyz[keep], self.score[keep], self.label[keep])


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"centers.{name}: cannot convert {type(value).__name__} to an array ({exc})") from exc


def center_tensors(centers: Any, device: torch.device | str | None = None) -> CenterTensors:
    """Normalise centres to `CenterTensors` on `device`.

    Accepts an object with `.xyz`, `.score`, `.label` (tensors or arrays), a mapping with keys xyz/score/label or
    centers_xyz/centers_score/centers_label (the golden npz names), a tuple (xyz, score, label), or None (no
    centres). Labels may be floats (as the official decoder returns them) but must be integral head classes 0..9.
    """
    if centers is None:
        xyz, score, label = np.zeros((0, 3), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    elif all(hasattr(centers, a) for a in ("xyz", "score", "label")):
        xyz, score, label = centers.xyz, centers.score, centers.label
    elif isinstance(centers, dict) or hasattr(centers, "files"):  # dict or np.load(...) NpzFile
        keys = set(centers.keys()) if isinstance(centers, dict) else set(centers.files)
        for prefix in ("", "centers_"):
            names = [prefix + n for n in ("xyz", "score", "label")]
            if all(n in keys for n in names):
                xyz, score, label = (centers[n] for n in names)
                break
        else:
            raise ValueError(f"centers: mapping has none of xyz/score/label or centers_xyz/...; keys {sorted(keys)}")
    elif isinstance(centers, (tuple, list)) and len(centers) == 3:
        xyz, score, label = centers
    else:
        raise ValueError(f"centers: expected an object with .xyz/.score/.label, got {type(centers).__name__}")

    xyz_t = _as_tensor(xyz, "xyz").to(device=device, dtype=torch.float32)
    score_t = _as_tensor(score, "score").to(device=device, dtype=torch.float32)
    label_raw = _as_tensor(label, "label").to(device=device)
    if xyz_t.ndim == 1 and xyz_t.numel() == 0:
        xyz_t = xyz_t.reshape(0, 3)
    if xyz_t.ndim != 2 or xyz_t.shape[1] != 3:
        raise ValueError(f"centers.xyz: expected shape (K, 3), got {tuple(xyz_t.shape)}")
    k = xyz_t.shape[0]
    if score_t.shape != (k,) or label_raw.shape != (k,):
        raise ValueError(
            f"centers: xyz has {k} rows but score has shape {tuple(score_t.shape)} and label {tuple(label_raw.shape)}"
        )
    if k and not bool((xyz_t.abs() <= MAX_ABS_CENTER_M).all()):  # one check on the common path (NaN fails too)
        if not bool(torch.isfinite(xyz_t).all()):
            bad = int(torch.nonzero(~torch.isfinite(xyz_t).all(1))[0, 0])
            raise ValueError(f"centers.xyz: row {bad} is not finite: {xyz_t[bad].tolist()}")
        bad = int(torch.nonzero(xyz_t.abs().amax(1) > MAX_ABS_CENTER_M)[0, 0])
        raise ValueError(f"centers.xyz: row {bad} = {xyz_t[bad].tolist()} is beyond +-{MAX_ABS_CENTER_M} m")
    if k:
        if label_raw.is_floating_point():
            label_f = label_raw.to(torch.float64)
            invalid = (label_f != label_f.round()) | (label_f < 0) | (label_f >= NUM_HEAD_CLASSES)
        else:
            invalid = (label_raw < 0) | (label_raw >= NUM_HEAD_CLASSES)
        if bool(invalid.any()):
            bad = int(torch.nonzero(invalid)[0, 0])
            raise ValueError(
                f"centers.label: row {bad} = {label_raw[bad].item()!r} is not a head class 0..{NUM_HEAD_CLASSES - 1}"
            )
    return CenterTensors(xyz_t, score_t, label_raw.to(torch.int64))


def _semantic_tensor(semantic: Any, grid: GridSpec) -> torch.Tensor:
    """(X,Y,Z) labels as a flat tensor of the input's integer dtype (validated: shape, integer dtype, 0..17)."""
    sem = semantic.detach() if isinstance(semantic, torch.Tensor) else torch.as_tensor(np.asarray(semantic))
    if tuple(sem.shape) != tuple(grid.shape):
        raise ValueError(f"semantic: expected shape {tuple(grid.shape)} [ix, iy, iz], got {tuple(sem.shape)}")
    if sem.is_floating_point() or sem.is_complex() or sem.dtype == torch.bool:
        raise ValueError(f"semantic: expected an integer label grid, got dtype {sem.dtype}")
    flat = sem.reshape(-1)
    lo, hi = torch.aminmax(flat)
    if int(lo) < 0 or int(hi) >= NUM_CLASSES:
        raise ValueError(f"semantic: labels must be in 0..{NUM_CLASSES - 1}, found values in {int(lo)}..{int(hi)}")
    return flat


# --------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceArrays:
    """The instance table as numpy arrays (rows sorted by id), ready for message building."""

    id: np.ndarray  # (K,) int32, >= 18
    occ_class: np.ndarray  # (K,) uint8 occupancy class index
    center_xyz: np.ndarray  # (K, 3) float32 metres (the decoded centre)
    score: np.ndarray  # (K,) float32
    voxel_count: np.ndarray  # (K,) int64

    def __len__(self) -> int:
        return int(self.id.shape[0])

    def rows(self) -> list[dict[str, Any]]:
        """One plain-Python dict per instance (id, occ_class, center_xyz, score, voxel_count)."""
        return [
            {
                "id": int(self.id[i]),
                "occ_class": int(self.occ_class[i]),
                "center_xyz": tuple(float(v) for v in self.center_xyz[i]),
                "score": float(self.score[i]),
                "voxel_count": int(self.voxel_count[i]),
            }
            for i in range(len(self))
        ]


@dataclass(frozen=True)
class InstanceTable:
    """One row per centre that took part in the assignment, sorted by id (torch tensors on the grid's device)."""

    id: torch.Tensor  # (K,) int32
    occ_class: torch.Tensor  # (K,) int64 occupancy class whose voxels this centre may claim
    center_xyz: torch.Tensor  # (K, 3) float32 metres
    score: torch.Tensor  # (K,) float32
    voxel_count: torch.Tensor  # (K,) int64

    def __len__(self) -> int:
        return int(self.id.shape[0])

    def numpy(self) -> InstanceArrays:
        return InstanceArrays(
            id=self.id.cpu().numpy().astype(np.int32),
            occ_class=self.occ_class.cpu().numpy().astype(np.uint8),
            center_xyz=self.center_xyz.cpu().numpy().astype(np.float32),
            score=self.score.cpu().numpy().astype(np.float32),
            voxel_count=self.voxel_count.cpu().numpy().astype(np.int64),
        )


@dataclass(frozen=True)
class PanopticResult:
    """`panoptic` (X,Y,Z) int32 on the input's device: values >= 18 are instance ids (see `instances`), values
    < 18 are class indices (stuff, free, things without a centre; 0 also marks voxels the official mode erased)."""

    panoptic: torch.Tensor
    instances: InstanceTable
    mode: str


# --------------------------------------------------------------------------------------------------------------
# Nearest centre of the same class
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    """Voxels (grid indices + class key) and centres (coordinates + class key) in one distance space.

    Voxel v sits at (axis_x[ix], axis_y[iy], axis_z[iz]); distances are squared Euclidean in float32, computed as
    ((vx-cx)^2 + (vy-cy)^2) + (vz-cz)^2 by every strategy, so all strategies and devices agree bit for bit.
    """

    ix: torch.Tensor  # (V,) int32 grid indices
    iy: torch.Tensor
    iz: torch.Tensor
    key: torch.Tensor  # (V,) int32 class key 0..H-1
    axes: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # float32 (X,), (Y,), (Z,) = _axes(grid, space, ...)
    center_pos: torch.Tensor  # (K, 3) float32
    center_key: torch.Tensor  # (K,) int64
    num_keys: int
    slack: float  # absolute tolerance (squared units) for float rounding in the pruning tests
    grid: GridSpec
    space: str  # "index" (voxel indices) or "metres" (voxel centres)


def _assign_dense(p: _Problem, block_elements: int) -> torch.Tensor:
    """Reference strategy: per class, all (voxel, centre) distances in voxel chunks; argmin = first minimum in
    centre order. Returns the winning centre index per voxel."""
    out = torch.full(p.key.shape, -1, dtype=torch.int64, device=p.key.device)
    vx, vy, vz = p.axes[0][p.ix], p.axes[1][p.iy], p.axes[2][p.iz]
    for k in range(p.num_keys):
        cidx = torch.nonzero(p.center_key == k).flatten()
        if cidx.numel() == 0:
            continue
        vidx = torch.nonzero(p.key == k).flatten()
        if vidx.numel() == 0:
            continue
        c = p.center_pos[cidx]
        step = max(1, block_elements // cidx.numel())
        for s in range(0, vidx.numel(), step):
            sel = vidx[s : s + step]
            dx = vx[sel, None] - c[None, :, 0]
            dy = vy[sel, None] - c[None, :, 1]
            dz = vz[sel, None] - c[None, :, 2]
            d = (dx * dx + dy * dy) + dz * dz
            out[sel] = cidx[torch.argmin(d, dim=1)]
    return out


# Tile sizes of the pruning hierarchy, coarse to fine (each divides the previous one per axis), and the single
# level used for small problems (voxels x same-class centres < SMALL_PROBLEM_PAIRS), where one pruning pass over
# larger tiles costs less than the hierarchy (measured on the benchmark scenes, docs/panoptic.md).
PRUNE_LEVELS: tuple[tuple[int, int, int], ...] = ((32, 32, 16), (8, 8, 8), (4, 4, 4))
SMALL_PRUNE_LEVELS: tuple[tuple[int, int, int], ...] = ((8, 8, 16),)
SMALL_PROBLEM_PAIRS = 1 << 21


def _grid_nonzero(values: torch.Tensor) -> torch.Tensor:
    """Indices (int64) of the non-zero elements of a grid-sized 1-D tensor. On the CPU through numpy on a zero-copy
    view: torch 2.13's CPU nonzero takes 1-1.8 ms on a 640k-voxel mask, numpy's 0.1-0.55 ms (measured,
    docs/panoptic.md). Elsewhere torch.nonzero."""
    if values.device.type != "cpu":
        return torch.nonzero(values).flatten()
    array = values.numpy()
    return torch.from_numpy(np.flatnonzero(array if array.dtype == np.bool_ else array != 0))


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """1-D gather (index_select is several times faster than advanced indexing on CPU)."""
    return torch.index_select(values, 0, index)


def _div(values: torch.Tensor, divisor: int) -> torch.Tensor:
    """Floor division of non-negative integers; a shift when the divisor is a power of two."""
    if divisor & (divisor - 1) == 0:
        return values >> (divisor.bit_length() - 1)
    return torch.div(values, divisor, rounding_mode="floor")


def _segment_ids(counts: torch.Tensor, total: int) -> torch.Tensor:
    """Segment index of each of `total` elements laid out as consecutive runs of length counts[g]."""
    return torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts, output_size=total)


def _segment_members(values: torch.Tensor, first: torch.Tensor, counts: torch.Tensor, total: int):
    """For rows with `counts[r]` members `values[first[r]:][:counts[r]]`: (row of each member, the member)."""
    seg = _segment_ids(counts, total)
    base = first - (torch.cumsum(counts, 0) - counts)  # member i of the concatenated runs is values[base[seg] + i]
    return seg, _take(values, _take(base, seg) + torch.arange(total, device=values.device))


@functools.lru_cache(maxsize=32)
def _tile_bounds(grid: GridSpec, space: str, device: torch.device, size: tuple[int, int, int]) -> torch.Tensor:
    """(3 kinds, 3 axes, T) float32: the coordinate of each tile's first voxel, last voxel and their midpoint per
    axis, T = the largest tile count of the axes (shorter axes are padded; padding is never indexed). Cached."""
    axes = _axes(grid, space, device)
    tiles = max((a.numel() + s - 1) // s for a, s in zip(axes, size))
    out = torch.zeros((3, 3, tiles), dtype=torch.float32, device=device)
    for a, (axis, s) in enumerate(zip(axes, size)):
        first = torch.arange(0, axis.numel(), s, device=device)
        out[0, a, : first.numel()] = _take(axis, first)
        out[1, a, : first.numel()] = _take(axis, torch.clamp(first + s - 1, max=axis.numel() - 1))
    out[2] = (out[0] + out[1]) * 0.5
    return out


def _chunks(counts: torch.Tensor, limit: int) -> list[tuple[int, int]]:
    """Split rows into consecutive ranges whose summed counts stay <= limit (a single row may exceed it)."""
    n = counts.numel()
    if n == 0:
        return []
    total = int(counts.sum())
    if total <= limit:
        return [(0, n)]
    ends = torch.cumsum(counts, 0).cpu()
    out, start, done = [], 0, 0
    while start < n:
        stop = int(torch.searchsorted(ends, done + limit, right=True))
        stop = max(stop, start + 1)
        out.append((start, stop))
        done = int(ends[stop - 1])
        start = stop
    return out


def _prune_level(p: _Problem, size, tiles, cand, first, count, block_elements):
    """Candidates of each group of one level (given those inherited from its parent: cand[first[g]:][:count[g]])
    minus every centre that is farther than the group's reference centre from all voxels of its tile.

    tiles: (3, G) tile index of each group per axis. Returns the kept candidates (grouped, centre order kept) and
    their count per group. (1-D gathers per axis: several times faster on CPU than the same on (n, 3) tensors.)"""
    num_c = p.center_pos.shape[0]
    device = cand.device
    # [kind][axis]: (T * K,) squared 1-D distance from each centre to each tile's first / last / middle coordinate.
    diff = _tile_bounds(p.grid, p.space, device, size)[:, :, :, None] - p.center_pos.t()[None, :, None, :]
    first_sq, last_sq, mid_sq = (diff * diff).flatten(2)
    tile_k = tiles * num_c
    shift = max(1, int(num_c).bit_length())
    kept, kept_count = [], []
    for s, e in _chunks(count, block_elements):
        cnt = count[s:e]
        seg, k = _segment_members(cand, first[s:e], cnt, int(cnt.sum()))
        at = [_take(tile_k[a, s:e], seg) + k for a in range(3)]  # table index of (tile, candidate) per axis
        # Reference centre per group: the candidate nearest to the tile's middle (first in centre order).
        mid = (_take(mid_sq[0], at[0]) + _take(mid_sq[1], at[1])) + _take(mid_sq[2], at[2])
        packed = (mid.view(torch.int32).to(torch.int64) << shift) | k
        ref = torch.full((e - s,), torch.iinfo(torch.int64).max, device=device)
        ref = ref.scatter_reduce_(0, seg, packed, "amin") & ((1 << shift) - 1)
        # Keep k unless it is farther than the reference from every voxel of the tile: the difference of the
        # squared distances is linear per axis, so its minimum over the box is a sum of per-axis end values.
        excess = None
        for a in range(3):
            at_ref = tile_k[a, s:e] + ref
            first_ref = _take(_take(first_sq[a], at_ref), seg)
            last_ref = _take(_take(last_sq[a], at_ref), seg)
            term = torch.minimum(_take(first_sq[a], at[a]) - first_ref, _take(last_sq[a], at[a]) - last_ref)
            excess = term if excess is None else excess + term
        keep = torch.nonzero(excess <= p.slack).flatten()
        kept.append(_take(k, keep))
        kept_count.append(torch.bincount(_take(seg, keep), minlength=e - s))
    if not kept:
        return cand[:0], count[:0]
    return torch.cat(kept), torch.cat(kept_count)


def _assign_pruned(p: _Problem, block_elements: int, levels=None) -> torch.Tensor:
    """Exact hierarchical pruned search.

    Voxels are grouped by (class, tile) at several tile sizes. Going from coarse to fine tiles, a centre stays a
    candidate of a group if its smallest possible squared distance to the tile is <= the largest possible distance
    of a reference candidate (so every nearest centre of every voxel in the tile, ties included, survives).
    Finally a voxel whose finest group kept a single candidate takes it; the others compare their group's
    candidates, and the minimum of (distance, centre index) picks the first nearest centre in centre order, exactly
    like an argmin over all centres of the class. Work is proportional to (groups + voxels) x candidates, chunked
    to at most `block_elements` pairs at a time; voxel-sized arrays are int32.
    """
    device = p.key.device
    num_c = p.center_pos.shape[0]
    # Root candidate lists: the centres of each class, in centre order.
    cand = torch.sort(p.center_key, stable=True).indices
    count = torch.bincount(p.center_key, minlength=p.num_keys)
    if levels is None:
        pairs = int((torch.bincount(p.key, minlength=p.num_keys) * count).sum())
        levels = SMALL_PRUNE_LEVELS if pairs < SMALL_PROBLEM_PAIRS else PRUNE_LEVELS
    sizes = [a.numel() for a in p.axes]
    lattice = [[(n + s - 1) // s for n, s in zip(sizes, lv)] for lv in levels]

    # Finest-level group of every voxel; coarser groups are derived from the finer ones.
    fine, nf = levels[-1], lattice[-1]
    gid = ((p.key * nf[0] + _div(p.ix, fine[0])) * nf[1] + _div(p.iy, fine[1])) * nf[2] + _div(p.iz, fine[2])
    row = torch.bincount(gid, minlength=p.num_keys * nf[0] * nf[1] * nf[2])
    fine_groups = torch.nonzero(row).flatten()
    group_ids = [None] * len(levels)  # present group ids per level (sorted)
    group_ids[-1] = fine_groups
    tiles = [None] * len(levels)
    parents = [None] * len(levels)
    for li in range(len(levels) - 1, -1, -1):
        n = lattice[li]
        g = group_ids[li]
        tz, rest = g % n[2], g // n[2]
        ty, rest = rest % n[1], rest // n[1]
        tx, key = rest % n[0], rest // n[0]
        tiles[li] = torch.stack((tx, ty, tz))
        if li == 0:
            parents[0] = key  # root = the class
            break
        ratio = [a // b for a, b in zip(levels[li - 1], levels[li])]
        npar = lattice[li - 1]
        pid = ((key * npar[0] + _div(tx, ratio[0])) * npar[1] + _div(ty, ratio[1])) * npar[2] + _div(tz, ratio[2])
        present = torch.bincount(pid, minlength=p.num_keys * npar[0] * npar[1] * npar[2])
        group_ids[li - 1] = torch.nonzero(present).flatten()
        table = torch.zeros_like(present)
        table[group_ids[li - 1]] = torch.arange(group_ids[li - 1].numel(), device=device)
        parents[li] = _take(table, pid)

    start = torch.cumsum(count, 0) - count
    for li, lv in enumerate(levels):
        par = parents[li]
        cand, count = _prune_level(p, lv, tiles[li], cand, _take(start, par), _take(count, par), block_elements)
        start = torch.cumsum(count, 0) - count

    # Voxels: a single candidate left in the finest group wins; otherwise compare the group's candidates.
    row[fine_groups] = torch.arange(fine_groups.numel(), device=device)
    vrow = _take(row, gid)
    out = _take(_take(cand, start), vrow)  # first candidate of the voxel's group
    multi = torch.nonzero(_take((count > 1).to(torch.uint8), vrow)).flatten()
    if multi.numel() == 0:
        return out
    vrow = _take(vrow, multi)
    v_count = _take(count, vrow)
    v_first = _take(start, vrow)
    vpos = [_take(p.axes[0], _take(p.ix, multi)), _take(p.axes[1], _take(p.iy, multi))]
    vpos.append(_take(p.axes[2], _take(p.iz, multi)))
    pos = [p.center_pos[:, a].contiguous() for a in range(3)]
    shift = max(1, int(num_c).bit_length())
    best_all = torch.empty_like(multi)
    for s, e in _chunks(v_count, block_elements):
        cnt = v_count[s:e]
        total = int(cnt.sum())
        seg, k = _segment_members(cand, v_first[s:e], cnt, total)
        d = None
        for a in range(3):
            diff = _take(vpos[a][s:e], seg) - _take(pos[a], k)
            sq = diff * diff
            d = sq if d is None else d + sq
        # Non-negative float32 bit patterns sort like the values: (distance, centre index) packed in one int64.
        packed = (d.view(torch.int32).to(torch.int64) << shift) | k
        best = torch.full((e - s,), torch.iinfo(torch.int64).max, device=device)
        best.scatter_reduce_(0, seg, packed, "amin")
        best_all[s:e] = best & ((1 << shift) - 1)
    return out.index_copy_(0, multi, best_all.to(out.dtype))


def _nearest(p: _Problem, strategy: str, block_elements: int) -> torch.Tensor:
    if p.key.numel() == 0:
        return p.key.clone()
    if strategy == "auto":
        strategy = "dense" if p.key.is_cuda else "pruned"
    if strategy == "dense":
        return _assign_dense(p, block_elements)
    return _assign_pruned(p, block_elements)


# --------------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _axes(grid: GridSpec, space: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-axis voxel coordinates (float32, cached; never modified): indices 0..n-1 ("index") or voxel centres
    in metres ("metres")."""
    if space == "index":
        return tuple(torch.arange(n, dtype=torch.float32, device=device) for n in grid.shape)
    return tuple(
        torch.from_numpy((lo + grid.voxel_size * (np.arange(n) + 0.5)).astype(np.float32)).to(device)
        for lo, n in zip(grid.lower, grid.shape)
    )


def _float_slack(grid: GridSpec, centers: torch.Tensor) -> float:
    """Tolerance for float32 rounding in the pruning tests (metres): far above the rounding error of squared
    distances over the coordinate range, far below any geometric difference that matters (~1e-5 of the squared
    range)."""
    extent = max(abs(v) for lo, n in zip(grid.lower, grid.shape) for v in (lo, lo + grid.voxel_size * n))
    if centers.numel():
        extent = max(extent, float(centers.abs().max()))
    return 1e-5 * (2.0 * extent) ** 2 + 1e-6


def official_center_voxels(xyz: torch.Tensor, grid: GridSpec = OCC_GRID) -> torch.Tensor:
    """Official centre quantisation: int(((x, y, z) - lower) / voxel_size) in float32, truncating toward zero
    (so -0.4 m < x - lower < 0 maps to 0). Returns (K, 3) int64."""
    lower = torch.tensor(grid.lower, dtype=torch.float32, device=xyz.device)
    size = torch.full((3,), grid.voxel_size, dtype=torch.float32, device=xyz.device)
    return ((xyz.to(torch.float32) - lower) / size).to(torch.int32).to(torch.int64)


def official_sort_indices(label: torch.Tensor) -> torch.Tensor:
    """The official id permutation: torch.sort (default, unstable) of the integer head classes, computed on CPU
    (the golden references were produced on CPU; a CUDA sort may order equal classes differently)."""
    return torch.sort(label.detach().cpu().to(torch.int32)).indices.to(label.device)


def _voxel_indices(flat: torch.Tensor, grid: GridSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grid indices (ix, iy, iz) of flat voxel indices, as int32 (several times faster than int64 on CPU)."""
    _, ny, nz = grid.shape
    flat = flat.to(torch.int32)
    column = _div(flat, nz)
    ix = _div(column, ny)
    return ix, column - ix * ny, flat - column * nz


# Every occupancy class either mode can claim or erase is <= this label (things are 1..10).
MAX_THING_LABEL = max(max(HEAD_TO_OCC), max(OFFICIAL_HEAD_TO_OCC))
# The word-level voxel search (`_select_voxels`) is used while at most this fraction of 8-voxel words has a thing.
SPARSE_WORD_FRACTION = 0.25


def _select_voxels(flat: torch.Tensor, selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat indices (ascending) and int64 labels of the voxels whose label is selected ((NUM_CLASSES,) bool), and
    the grid as uint8 (the cheapest source for the int32 output copy).

    Thing voxels are usually a few thousand of the 640k, so the full grid is touched by two cheap uint8 operations
    only: a byte is 1 iff its label is <= MAX_THING_LABEL (adding 255 - MAX_THING_LABEL sets bit 7 exactly for
    those, labels being 0..17), and the bytes are scanned as int64 words of 8 voxels. Only the labels of words
    that hold a thing go through the class table. A dense grid (noisy labels) takes the table over all voxels.
    """
    n = flat.numel()
    labels = flat if flat.dtype == torch.uint8 else flat.to(torch.uint8)  # validated 0..17
    table = selected.to(torch.uint8)
    if n % 8 == 0:
        low = torch.add(labels, 255 - MAX_THING_LABEL).bitwise_right_shift_(7)
        words = torch.nonzero(low.view(torch.int64)).flatten()
        if words.numel() <= SPARSE_WORD_FRACTION * (n // 8):
            word_labels = _take(labels.view(-1, 8), words).reshape(-1)
            hit = torch.nonzero(_take(table, word_labels.to(torch.int64))).flatten()
            return _take(words, hit >> 3) * 8 + (hit & 7), _take(word_labels, hit).to(torch.int64), labels
    index = flat if flat.dtype in (torch.int32, torch.int64) else labels.to(torch.int32)
    hit = _grid_nonzero(_take(table, index))
    return hit, _take(labels, hit).to(torch.int64), labels


def _assign_corrected(
    flat: torch.Tensor, ctr: CenterTensors, grid: GridSpec, strategy: str, block_elements: int
) -> PanopticResult:
    device = flat.device
    # Score order, stable (equal scores keep the decoder's order); ids 18, 19, ... in that order.
    ctr = ctr.select(torch.sort(ctr.score, descending=True, stable=True).indices)
    k = len(ctr)
    occ_to_head = torch.full((NUM_CLASSES,), -1, dtype=torch.int32, device=device)
    occ_to_head[torch.tensor(HEAD_TO_OCC, device=device)] = torch.arange(
        NUM_HEAD_CLASSES, device=device, dtype=torch.int32
    )
    has_center = torch.bincount(ctr.label, minlength=NUM_HEAD_CLASSES) > 0
    claimable = (occ_to_head >= 0) & has_center[occ_to_head.clamp(min=0)]
    vox, label, labels_u8 = _select_voxels(flat, claimable)
    ix, iy, iz = _voxel_indices(vox, grid)
    head = _take(occ_to_head, label)
    axes = _axes(grid, "metres", device)
    slack = _float_slack(grid, ctr.xyz)
    problem = _Problem(ix, iy, iz, head, axes, ctr.xyz, ctr.label, NUM_HEAD_CLASSES, slack, grid, "metres")
    winner = _nearest(problem, strategy, block_elements)
    ids = torch.arange(FIRST_INSTANCE_ID, FIRST_INSTANCE_ID + k, device=device)
    out = labels_u8.to(torch.int32)  # a new tensor (uint8 -> int32), reading a quarter of the bytes
    out.index_copy_(0, vox, _take(ids, winner).to(torch.int32))
    occ_class = torch.tensor(HEAD_TO_OCC, device=device)[ctr.label]
    return PanopticResult(out.reshape(grid.shape), _table(ids, occ_class, ctr, winner), "corrected")


def _assign_official(
    flat: torch.Tensor, ctr: CenterTensors, sort_indices: Any, grid: GridSpec, strategy: str, block_elements: int
) -> PanopticResult:
    device = flat.device
    k = len(ctr)
    if sort_indices is None:
        perm = official_sort_indices(ctr.label)
    else:
        perm = sort_indices.detach() if isinstance(sort_indices, torch.Tensor) else torch.as_tensor(sort_indices)
        perm = perm.to(device=device, dtype=torch.int64)
        if perm.shape != (k,) or not torch.equal(torch.sort(perm).values, torch.arange(k, device=device)):
            raise ValueError(f"sort_indices: expected a permutation of 0..{k - 1}, got shape {tuple(perm.shape)}")
        if not bool((ctr.label[perm][1:] >= ctr.label[perm][:-1]).all()):
            raise ValueError("sort_indices: does not sort the centre labels ascending")
    ids = perm + FIRST_INSTANCE_ID  # centre j gets 18 + perm[j] (a permutation, not 18 + j)

    occ_to_head = torch.full((NUM_CLASSES,), -1, dtype=torch.int32, device=device)
    occ_to_head[: len(OFFICIAL_OCC_TO_HEAD)] = torch.tensor(OFFICIAL_OCC_TO_HEAD, device=device)
    head_to_occ = torch.tensor(OFFICIAL_HEAD_TO_OCC, device=device)
    has_center = torch.bincount(ctr.label, minlength=NUM_HEAD_CLASSES) > 0
    visited = torch.zeros(NUM_CLASSES, dtype=torch.bool, device=device)
    visited[head_to_occ[ctr.label]] = True  # occupancy classes the kernel visits (written, 0 if no match)
    claimable = visited & (occ_to_head >= 0) & has_center[occ_to_head.clamp(min=0)]
    vox, label, labels_u8 = _select_voxels(flat, visited)  # claimed voxels and those the kernel erases to 0
    claimed = torch.nonzero(_take(claimable, label)).flatten()
    ix, iy, iz = _voxel_indices(_take(vox, claimed), grid)
    head = _take(occ_to_head, _take(label, claimed))
    center_vox = official_center_voxels(ctr.xyz, grid).to(torch.float32)
    # Integer coordinates: every squared distance is an exact integer in float32, so 0.5 is an exact cut.
    axes = _axes(grid, "index", device)
    problem = _Problem(ix, iy, iz, head, axes, center_vox, ctr.label, NUM_HEAD_CLASSES, 0.5, grid, "index")
    winner = _nearest(problem, strategy, block_elements)
    value = torch.zeros(vox.numel(), dtype=torch.int32, device=device)
    value.index_copy_(0, claimed, _take(ids, winner).to(torch.int32))
    out = labels_u8.to(torch.int32)  # a new tensor (uint8 -> int32), reading a quarter of the bytes
    out.index_copy_(0, vox, value)
    return PanopticResult(out.reshape(grid.shape), _table(ids, head_to_occ[ctr.label], ctr, winner), "official")


def _table(ids: torch.Tensor, occ_class: torch.Tensor, ctr: CenterTensors, winner: torch.Tensor) -> InstanceTable:
    counts = torch.bincount(winner, minlength=len(ctr))
    if len(ctr) > 1 and not bool((ids[1:] > ids[:-1]).all()):  # corrected ids are already in order
        order = torch.argsort(ids)
        ids, occ_class, counts = ids[order], occ_class[order], counts[order]
        ctr = ctr.select(order)
    return InstanceTable(  # copies: never alias the caller's centre tensors
        id=ids.to(torch.int32),
        occ_class=occ_class,
        center_xyz=ctr.xyz.clone(),
        score=ctr.score.clone(),
        voxel_count=counts,
    )


def assign_instances(
    semantic: Any,
    centers: Any,
    mode: str = "corrected",
    *,
    score_threshold: float | None = None,
    sort_indices: Any = None,
    grid: GridSpec = OCC_GRID,
    strategy: str = "auto",
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> PanopticResult:
    """Panoptic grid from a semantic grid and instance centres.

    semantic: (X,Y,Z) integer labels [ix, iy, iz] (torch tensor on any device, or array -> CPU).
    centers: `Centers` (or anything `center_tensors` accepts), in the decoder's score order.
    mode: "corrected" or "official" (see the module docstring and docs/panoptic.md).
    score_threshold: if given, centres with score <= threshold (float32 comparison, as the official decoder) are
        dropped first; None keeps all (the decoder already applied its threshold).
    sort_indices: official mode only: the permutation argsort(label) that numbers the ids; default = torch's CPU
        sort, which reproduces the golden references.
    strategy: "pruned" (exact hierarchical pruned search, CPU default), "dense" (per-class brute force in chunks,
        CUDA default) or "auto". Both give identical results.
    block_elements: upper bound on the elements of one (voxels x candidates) block (memory bound).
    """
    if mode not in PANO_MODES:
        raise ValueError(f"mode: {mode!r} is not one of {', '.join(PANO_MODES)}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if block_elements < 1:
        raise ValueError(f"block_elements: {block_elements!r} must be >= 1")
    flat = _semantic_tensor(semantic, grid)
    device = flat.device
    ctr = center_tensors(centers, device)
    if score_threshold is not None:
        ctr = ctr.select(ctr.score > torch.tensor(score_threshold, dtype=torch.float32, device=device))
    if mode == "official":
        return _assign_official(flat, ctr, sort_indices, grid, strategy, block_elements)
    if sort_indices is not None:
        raise ValueError("sort_indices: only meaningful in official mode")
    return _assign_corrected(flat, ctr, grid, strategy, block_elements)
