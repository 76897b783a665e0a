"""Panoptic occupancy post-processing: give every "thing" voxel the id of the nearest instance centre of its class.

Panoptic-FlashOcc (paper §3.4, Algorithm 1) turns a semantic grid plus the decoded instance centres of its
centerness head into a panoptic grid without learned parameters: every voxel of a thing class takes the id of the
nearest centre of the same class. This module does that in pure torch, vectorized, on CPU or CUDA (no extension,
no ROS), in two modes (details and the full list of differences: docs/panoptic.md):

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
    class (HEAD_CLASS_NAMES order). Any object with `.xyz`, `.score`, `.label` (e.g. flashocc_ros.centers.Centers)
    converts to this with `center_tensors`."""

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
    if k:
        if not bool(torch.isfinite(xyz_t).all()):
            bad = int(torch.nonzero(~torch.isfinite(xyz_t).all(1))[0, 0])
            raise ValueError(f"centers.xyz: row {bad} is not finite: {xyz_t[bad].tolist()}")
        too_far = xyz_t.abs().amax(1) > MAX_ABS_CENTER_M
        if bool(too_far.any()):
            bad = int(torch.nonzero(too_far)[0, 0])
            raise ValueError(f"centers.xyz: row {bad} = {xyz_t[bad].tolist()} is beyond +-{MAX_ABS_CENTER_M} m")
        label_f = label_raw.to(torch.float64)
        invalid = (label_f != label_f.round()) | (label_f < 0) | (label_f >= NUM_HEAD_CLASSES)
        if bool(invalid.any()):
            bad = int(torch.nonzero(invalid)[0, 0])
            raise ValueError(
                f"centers.label: row {bad} = {label_raw[bad].item()!r} is not a head class 0..{NUM_HEAD_CLASSES - 1}"
            )
    return CenterTensors(xyz_t, score_t, label_raw.to(torch.int64))


def _semantic_tensor(semantic: Any, grid: GridSpec) -> torch.Tensor:
    """(X,Y,Z) labels as a flat int32 tensor (validated: shape, integer dtype, values 0..17)."""
    sem = semantic.detach() if isinstance(semantic, torch.Tensor) else torch.as_tensor(np.asarray(semantic))
    if tuple(sem.shape) != tuple(grid.shape):
        raise ValueError(f"semantic: expected shape {tuple(grid.shape)} [ix, iy, iz], got {tuple(sem.shape)}")
    if sem.is_floating_point() or sem.is_complex() or sem.dtype == torch.bool:
        raise ValueError(f"semantic: expected an integer label grid, got dtype {sem.dtype}")
    flat = sem.reshape(-1)
    lo, hi = torch.aminmax(flat)
    if int(lo) < 0 or int(hi) >= NUM_CLASSES:
        raise ValueError(f"semantic: labels must be in 0..{NUM_CLASSES - 1}, found values in {int(lo)}..{int(hi)}")
    return flat.to(torch.int32)


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

    ix: torch.Tensor  # (V,) int64
    iy: torch.Tensor
    iz: torch.Tensor
    key: torch.Tensor  # (V,) int64 class key 0..H-1
    axes: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # float32 (X,), (Y,), (Z,)
    center_pos: torch.Tensor  # (K, 3) float32
    center_key: torch.Tensor  # (K,) int64
    num_keys: int
    slack: float  # absolute tolerance (squared units) for float rounding in the pruning tests


def _assign_dense(p: _Problem, block_elements: int) -> torch.Tensor:
    """Reference strategy: per class, all (voxel, centre) distances in voxel chunks; argmin = first minimum in
    centre order. Returns the winning centre index per voxel."""
    out = torch.full_like(p.key, -1)
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


# Tile sizes of the pruning hierarchy, coarse to fine (each divides the previous one per axis).
PRUNE_LEVELS: tuple[tuple[int, int, int], ...] = ((16, 16, 16), (4, 4, 8))


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


def _axis_tables(axis: torch.Tensor, size: int, centers: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per (tile along one axis, centre), flattened (tiles * K,): squared 1-D distance from the centre coordinate
    to the tile's first voxel coordinate, to its last one, and to their midpoint."""
    n = axis.numel()
    first = torch.arange(0, n, size, device=axis.device)
    lo = _take(axis, first)[:, None]
    hi = _take(axis, torch.clamp(first + size - 1, max=n - 1))[:, None]
    c = centers[None, :]
    return tuple(((v - c) * (v - c)).reshape(-1) for v in (lo, hi, (lo + hi) * 0.5))


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


def _assign_pruned(p: _Problem, block_elements: int, levels=PRUNE_LEVELS) -> torch.Tensor:
    """Exact hierarchical pruned search.

    Voxels are grouped by (class, tile) at several tile sizes. Going from coarse to fine tiles, a centre stays a
    candidate of a group if its smallest possible squared distance to the tile is <= the smallest largest-possible
    distance of any candidate (so every nearest centre of every voxel in the tile, ties included, survives).
    Finally each voxel compares only its finest group's candidates; the minimum of (distance, centre index) picks
    the first nearest centre in centre order, exactly like an argmin over all centres of the class.
    Work is proportional to (groups + voxels) x candidates, chunked to at most `block_elements` pairs at a time.
    """
    device = p.key.device
    num_c = p.center_pos.shape[0]
    sizes = [a.numel() for a in p.axes]
    lattice = [[(n + s - 1) // s for n, s in zip(sizes, lv)] for lv in levels]

    # Finest-level group of every voxel; coarser groups are derived from the finer ones.
    fine, nf = levels[-1], lattice[-1]
    gid = ((p.key * nf[0] + _div(p.ix, fine[0])) * nf[1] + _div(p.iy, fine[1])) * nf[2] + _div(p.iz, fine[2])
    group_ids = [None] * len(levels)  # present group ids per level (sorted)
    group_ids[-1] = torch.nonzero(torch.bincount(gid, minlength=p.num_keys * nf[0] * nf[1] * nf[2])).flatten()
    coords = [None] * len(levels)
    parents = [None] * len(levels)
    for li in range(len(levels) - 1, -1, -1):
        n = lattice[li]
        g = group_ids[li]
        tz, rest = g % n[2], g // n[2]
        ty, rest = rest % n[1], rest // n[1]
        tx, key = rest % n[0], rest // n[0]
        coords[li] = (tx, ty, tz, key)
        if li == 0:
            parents[0] = key  # root = the class
            break
        ratio = [a // b for a, b in zip(levels[li - 1], levels[li])]
        npar = lattice[li - 1]
        pid = ((key * npar[0] + _div(tx, ratio[0])) * npar[1] + _div(ty, ratio[1])) * npar[2] + _div(tz, ratio[2])
        present = torch.bincount(pid, minlength=p.num_keys * npar[0] * npar[1] * npar[2])
        group_ids[li - 1] = torch.nonzero(present).flatten()
        row = torch.zeros_like(present)
        row[group_ids[li - 1]] = torch.arange(group_ids[li - 1].numel(), device=device)
        parents[li] = _take(row, pid)

    # Root candidate lists: the centres of each class, in centre order.
    order = torch.sort(p.center_key, stable=True).indices
    count = torch.bincount(p.center_key, minlength=p.num_keys)
    start = torch.cumsum(count, 0) - count
    cand = order

    pos = [p.center_pos[:, a].contiguous() for a in range(3)]
    shift = max(1, int(num_c).bit_length())
    low_bits = (1 << shift) - 1
    for li, lv in enumerate(levels):
        tx, ty, tz, _ = coords[li]
        tables = [_axis_tables(p.axes[a], lv[a], pos[a]) for a in range(3)]
        bases = [t * num_c for t in (tx, ty, tz)]
        par = parents[li]
        c_count = _take(count, par)
        c_base = _take(start, par) - (torch.cumsum(c_count, 0) - c_count)
        kept, kept_count = [], []
        for s, e in _chunks(c_count, block_elements):
            cnt = c_count[s:e]
            total = int(cnt.sum())
            seg = _segment_ids(cnt, total)
            offset = int(c_count[:s].sum()) if s else 0
            k = _take(cand, _take(c_base[s:e], seg) + torch.arange(offset, offset + total, device=device))
            idx = [_take(bases[a][s:e], seg) + k for a in range(3)]
            # Reference centre per group: the candidate nearest to the tile's middle (first in centre order).
            mid = (_take(tables[0][2], idx[0]) + _take(tables[1][2], idx[1])) + _take(tables[2][2], idx[2])
            packed = (mid.view(torch.int32).to(torch.int64) << shift) | k
            ref = torch.full((e - s,), torch.iinfo(torch.int64).max, device=device)
            ref = ref.scatter_reduce_(0, seg, packed, "amin") & low_bits
            # Keep k unless it is farther than the reference from every voxel of the tile: the difference of the
            # squared distances is linear per axis, so its minimum over the box is a sum of per-axis end values.
            excess = None
            for a in range(3):
                ref_idx = bases[a][s:e] + ref
                lo_k, hi_k = _take(tables[a][0], idx[a]), _take(tables[a][1], idx[a])
                lo_r = _take(_take(tables[a][0], ref_idx), seg)
                hi_r = _take(_take(tables[a][1], ref_idx), seg)
                term = torch.minimum(lo_k - lo_r, hi_k - hi_r)
                excess = term if excess is None else excess + term
            keep = torch.nonzero(excess <= p.slack).flatten()
            kept.append(_take(k, keep))
            kept_count.append(torch.bincount(_take(seg, keep), minlength=e - s))
        cand = torch.cat(kept) if kept else cand[:0]
        count = torch.cat(kept_count) if kept_count else count[:0]
        start = torch.cumsum(count, 0) - count

    # Voxels against their finest group's candidates.
    row = torch.zeros(p.num_keys * nf[0] * nf[1] * nf[2], dtype=torch.int64, device=device)
    row[group_ids[-1]] = torch.arange(group_ids[-1].numel(), device=device)
    vrow = _take(row, gid)
    v_count = _take(count, vrow)
    v_base = _take(start, vrow) - (torch.cumsum(v_count, 0) - v_count)
    vpos = [_take(p.axes[0], p.ix), _take(p.axes[1], p.iy), _take(p.axes[2], p.iz)]
    out = torch.empty_like(p.key)
    for s, e in _chunks(v_count, block_elements):
        cnt = v_count[s:e]
        total = int(cnt.sum())
        seg = _segment_ids(cnt, total)
        offset = int(v_count[:s].sum()) if s else 0
        k = _take(cand, _take(v_base[s:e], seg) + torch.arange(offset, offset + total, device=device))
        d = None
        for a in range(3):
            diff = _take(vpos[a][s:e], seg) - _take(pos[a], k)
            sq = diff * diff
            d = sq if d is None else d + sq
        # Non-negative float32 bit patterns sort like the values: (distance, centre index) packed in one int64.
        packed = (d.view(torch.int32).to(torch.int64) << shift) | k
        best = torch.full((e - s,), torch.iinfo(torch.int64).max, device=device)
        best.scatter_reduce_(0, seg, packed, "amin")
        out[s:e] = best & low_bits
    return out


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


def _axes_voxel_index(grid: GridSpec, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.arange(n, dtype=torch.float32, device=device) for n in grid.shape)


def _axes_voxel_center(grid: GridSpec, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.from_numpy((lo + grid.voxel_size * (np.arange(n) + 0.5)).astype(np.float32)).to(device)
        for lo, n in zip(grid.lower, grid.shape)
    )


def _float_slack(axes: tuple[torch.Tensor, ...], centers: torch.Tensor) -> float:
    """Tolerance for float32 rounding in the pruning tests: far above the rounding error of squared distances
    over the coordinate range, far below any geometric difference that matters (~1e-5 of the squared range)."""
    extent = max([float(a.abs().max()) for a in axes] + [float(centers.abs().max()) if centers.numel() else 0.0])
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
    _, ny, nz = grid.shape
    iz = flat % nz if nz & (nz - 1) else flat & (nz - 1)
    column = _div(flat, nz)
    return _div(column, ny), column % ny, iz


def _claims(flat: torch.Tensor, occ_to_head: torch.Tensor, claimable: torch.Tensor, out_value: torch.Tensor, grid):
    """Voxels whose label is claimable (flat indices, their head class, grid indices) and the output grid
    initialised from a per-label table (labels kept, or 0 for voxels the official kernel erases)."""
    vox = torch.nonzero(_take(claimable, flat)).flatten()
    head = _take(occ_to_head, _take(flat, vox))
    out = _take(out_value, flat)
    return vox, head, _voxel_indices(vox, grid), out


def _assign_corrected(
    flat: torch.Tensor, ctr: CenterTensors, grid: GridSpec, strategy: str, block_elements: int
) -> PanopticResult:
    device = flat.device
    # Score order, stable (equal scores keep the decoder's order); ids 18, 19, ... in that order.
    ctr = ctr.select(torch.sort(ctr.score, descending=True, stable=True).indices)
    k = len(ctr)
    occ_to_head = torch.full((NUM_CLASSES,), -1, dtype=torch.int64, device=device)
    occ_to_head[torch.tensor(HEAD_TO_OCC, device=device)] = torch.arange(NUM_HEAD_CLASSES, device=device)
    has_center = torch.bincount(ctr.label, minlength=NUM_HEAD_CLASSES) > 0
    claimable = (occ_to_head >= 0) & has_center[occ_to_head.clamp(min=0)]
    labels = torch.arange(NUM_CLASSES, dtype=torch.int32, device=device)
    vox, head, (ix, iy, iz), out = _claims(flat, occ_to_head, claimable, labels, grid)
    axes = _axes_voxel_center(grid, device)
    problem = _Problem(ix, iy, iz, head, axes, ctr.xyz, ctr.label, NUM_HEAD_CLASSES, _float_slack(axes, ctr.xyz))
    winner = _nearest(problem, strategy, block_elements)
    ids = torch.arange(FIRST_INSTANCE_ID, FIRST_INSTANCE_ID + k, device=device)
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

    occ_to_head = torch.full((NUM_CLASSES,), -1, dtype=torch.int64, device=device)
    occ_to_head[: len(OFFICIAL_OCC_TO_HEAD)] = torch.tensor(OFFICIAL_OCC_TO_HEAD, device=device)
    head_to_occ = torch.tensor(OFFICIAL_HEAD_TO_OCC, device=device)
    has_center = torch.bincount(ctr.label, minlength=NUM_HEAD_CLASSES) > 0
    visited = torch.zeros(NUM_CLASSES, dtype=torch.bool, device=device)
    visited[head_to_occ[ctr.label]] = True  # occupancy classes the kernel visits (written, 0 if no match)
    claimable = visited & (occ_to_head >= 0) & has_center[occ_to_head.clamp(min=0)]
    labels = torch.arange(NUM_CLASSES, dtype=torch.int32, device=device)
    out_value = torch.where(visited, torch.zeros_like(labels), labels)
    vox, head, (ix, iy, iz), out = _claims(flat, occ_to_head, claimable, out_value, grid)
    center_vox = official_center_voxels(ctr.xyz, grid).to(torch.float32)
    # Integer coordinates: every squared distance is an exact integer in float32, so 0.5 is an exact cut.
    problem = _Problem(ix, iy, iz, head, _axes_voxel_index(grid, device), center_vox, ctr.label, NUM_HEAD_CLASSES, 0.5)
    winner = _nearest(problem, strategy, block_elements)
    out.index_copy_(0, vox, _take(ids, winner).to(torch.int32))
    return PanopticResult(out.reshape(grid.shape), _table(ids, head_to_occ[ctr.label], ctr, winner), "official")


def _table(ids: torch.Tensor, occ_class: torch.Tensor, ctr: CenterTensors, winner: torch.Tensor) -> InstanceTable:
    counts = torch.bincount(winner, minlength=len(ctr))
    order = torch.argsort(ids)
    return InstanceTable(
        id=ids[order].to(torch.int32),
        occ_class=occ_class[order],
        center_xyz=ctr.xyz[order],
        score=ctr.score[order],
        voxel_count=counts[order],
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
