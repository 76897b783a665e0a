"""Camera rig geometry of the LSS view transform: key-ego poses, frustum, voxel-pooling indices, BEV pooling.

Everything here depends only on the calibration, the test-time image augmentation and the BEV augmentation
(``bda``), so the pooling indices are computed once per rig (``PoolIndexCache``) and reused for every frame.
The float32 operation order of the official BEVDet/FlashOcc implementation is kept (``torch.inverse`` on 3x3,
batched ``matmul``, truncation toward zero when quantising), because a point lying on a voxel border must land in
the same voxel as in the official code.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from flashocc_ros.config import CAMERA_NAMES, IMAGE_AUG, OCC_GRID, ModelVariant, get_variant
from flashocc_ros.transforms import quaternion_xyzw_to_matrix, rigid

NUM_CAMERAS = len(CAMERA_NAMES)
FEATURE_STRIDE = 16  # image-encoder output stride (CustomFPN level 0)
FEATURE_HW = (IMAGE_AUG.input_hw[0] // FEATURE_STRIDE, IMAGE_AUG.input_hw[1] // FEATURE_STRIDE)  # (16, 44)

# LSS BEV grid of the view transformer (grid_config x/y/z of the configs): the occupancy grid's x/y cells, one
# 6.4 m high slab over its whole height: lower (-40, -40, -1), interval (0.4, 0.4, 6.4), size (200, 200, 1).
BEV_LOWER = OCC_GRID.lower
BEV_INTERVAL = (OCC_GRID.voxel_size, OCC_GRID.voxel_size, OCC_GRID.upper[2] - OCC_GRID.lower[2])
BEV_SIZE = (OCC_GRID.shape[0], OCC_GRID.shape[1], 1)  # (Dx, Dy, Dz)
MLP_INPUT_DIM = 27


@dataclass
class RigCalibration:
    """Calibration of the six cameras in ``CAMERA_NAMES`` order.

    intrinsics: (6,3,3) K of the SOURCE images; sensor2ego: (6,4,4) camera (optical frame) -> ego;
    ego2global: (6,4,4) ego (at each camera's timestamp) -> global, or None when all cameras share one ego pose.
    """

    intrinsics: np.ndarray
    sensor2ego: np.ndarray
    ego2global: np.ndarray | None = None
    image_hw: tuple[int, int] = IMAGE_AUG.source_hw

    def __post_init__(self) -> None:
        self.intrinsics = _as_array("intrinsics", self.intrinsics, (NUM_CAMERAS, 3, 3))
        self.sensor2ego = _as_array("sensor2ego", self.sensor2ego, (NUM_CAMERAS, 4, 4))
        if self.ego2global is not None:
            self.ego2global = _as_array("ego2global", self.ego2global, (NUM_CAMERAS, 4, 4))
        self.image_hw = (int(self.image_hw[0]), int(self.image_hw[1]))

    def sensor2keyego(self) -> np.ndarray:
        return sensor_to_key_ego(self.sensor2ego, self.ego2global)

    def fingerprint(self) -> str:
        """Stable digest of the calibration values (for caches)."""
        h = hashlib.sha256()
        for a in (self.intrinsics, self.sensor2ego, self.ego2global):
            h.update(b"none" if a is None else np.ascontiguousarray(a, dtype=np.float64).tobytes())
        h.update(repr(self.image_hw).encode())
        return h.hexdigest()


def _as_array(name: str, value, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
    if a.shape == (1, *shape):
        a = a[0]
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains non-finite values")
    return a


def _as_float32_then_64(name: str, value) -> torch.Tensor:
    """(6, 4, 4) float64 tensor of ``value`` rounded to float32 first (the official input tensors' precision)."""
    a = _as_array(name, value, (NUM_CAMERAS, 4, 4)).astype(np.float32)
    return torch.from_numpy(a).to(torch.float64)


def sensor_to_key_ego(sensor2ego, ego2global=None, key_ego2global=None) -> np.ndarray:
    """camera -> key-ego (CAM_FRONT_LEFT's ego) transforms, (6,4,4) float32.

    ``inv(ego2global[0]) @ ego2global[n] @ sensor2ego[n]`` in float64, cast to float32 (official prepare_inputs).
    The official data pipeline hands the network float32 tensors (``torch.Tensor`` of the float64 nuScenes
    calibration and poses), so the inputs are rounded to float32 before the float64 product: with float64 inputs
    as given by TF, ~0.1 % of the labels of the official answer change (global translations of hundreds of metres
    lose their low bits in float32, and the official answer is computed from those rounded values).
    Accepts (6,4,4) or (1,6,4,4) arrays/tensors; ego2global None means one ego pose for all cameras.
    ``key_ego2global`` (4,4): the key ego pose when it is another frame's (temporal variants: the current frame's
    CAM_FRONT_LEFT ego for every previous frame, SPEC4D 3); default ``ego2global[0]``.
    """
    s2e = _as_float32_then_64("sensor2ego", sensor2ego)
    if ego2global is None:
        return s2e.float().numpy()
    e2g = _as_float32_then_64("ego2global", ego2global)
    if key_ego2global is not None:
        key = np.asarray(key_ego2global, dtype=np.float64).reshape(4, 4).astype(np.float32)
        global2keyego = torch.inverse(torch.from_numpy(key).to(torch.float64)[None])
        return (global2keyego @ e2g @ s2e).float().numpy()
    global2keyego = torch.inverse(e2g[0:1])
    return (global2keyego @ e2g @ s2e).float().numpy()


def depth_values(variant: ModelVariant | str) -> torch.Tensor:
    """(D,) float32 depth-bin centres: ``arange(1, 45, step)``, or for SID variants (4D-stereo, SPEC4D 5)
    ``exp(log(1) + i / (D - 1) * log((45 - 1) / 1))`` evaluated in float32 as the official create_frustum."""
    v = get_variant(variant) if isinstance(variant, str) else variant
    d = torch.arange(*v.depth_range, dtype=torch.float32)
    if getattr(v, "sid", False):
        cfg = torch.tensor(v.depth_range).float()
        i = torch.arange(d.shape[0]).float()
        d = torch.exp(torch.log(cfg[0]) + i / (d.shape[0] - 1) * torch.log((cfg[1] - 1) / cfg[0]))
    return d


def make_frustum(variant: ModelVariant | str, stride: int = FEATURE_STRIDE) -> torch.Tensor:
    """(D, H/stride, W/stride, 3) float32 frustum of (u, v, d): u, v in augmented-image pixels (linspace, not pixel
    centres); stride 16 = the LSS feature map (16, 44), stride 4 = the stereo cost-volume grid (64, 176)."""
    v = get_variant(variant) if isinstance(variant, str) else variant
    in_h, in_w = IMAGE_AUG.input_hw
    fh, fw = in_h // stride, in_w // stride
    d = depth_values(v).view(-1, 1, 1).expand(-1, fh, fw)
    num_d = d.shape[0]
    u = torch.linspace(0, in_w - 1, fw, dtype=torch.float32).view(1, 1, fw).expand(num_d, fh, fw)
    vv = torch.linspace(0, in_h - 1, fh, dtype=torch.float32).view(1, fh, 1).expand(num_d, fh, fw)
    return torch.stack((u, vv, d), -1)


def _f32(name: str, value, shape: tuple[int, ...]) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().to(torch.float32)
    else:
        t = torch.from_numpy(np.array(value, dtype=np.float32))
    if tuple(t.shape) == (1, *shape):
        t = t[0]
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    return t


@dataclass
class PoolIndices:
    """Voxel-pooling indices (bev_pool_v2 layout), sorted by ``ranks_bev``.

    ranks_bev: flat BEV cell ``iy * 200 + ix`` of each kept frustum point; ranks_depth: flat index into the depth
    probabilities (6, D, 16, 44); ranks_feat: flat index into the feature pixels (6, 16, 44);
    interval_starts/lengths: runs of equal ranks_bev (one per non-empty cell).
    """

    ranks_bev: torch.Tensor
    ranks_depth: torch.Tensor
    ranks_feat: torch.Tensor
    interval_starts: torch.Tensor
    interval_lengths: torch.Tensor
    _csr: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_points(self) -> int:
        return int(self.ranks_bev.numel())

    @property
    def num_cells(self) -> int:
        return int(self.interval_starts.numel())

    def to(self, device=None, dtype: torch.dtype | None = None) -> PoolIndices:
        def conv(t):
            return t.to(device=device, dtype=dtype or t.dtype)

        return PoolIndices(*(conv(t) for t in self.as_tuple()))

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        """(ranks_bev, ranks_depth, ranks_feat, interval_starts, interval_lengths)."""
        return self.ranks_bev, self.ranks_depth, self.ranks_feat, self.interval_starts, self.interval_lengths

    def network_inputs(self) -> tuple[torch.Tensor, ...]:
        """ONNX input order: (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths)."""
        return self.ranks_depth, self.ranks_feat, self.ranks_bev, self.interval_starts, self.interval_lengths


# -- fast path (per-frame capable) ------------------------------------------------------------------------------
# The official code multiplies every frustum point by 3x3 matrices with a broadcast batched matmul. For 3x3 @ 3x1
# products torch's CPU bmm runs its naive kernel, which accumulates in float32 in the order
# ``(a0*b0 + a1*b1) + a2*b2`` (no FMA). The functions below evaluate exactly those float32 operations as
# elementwise numpy ops on whole columns (a few passes over 6 x N floats instead of N tiny matmuls), so every point,
# and hence every truncated voxel index, is bit-identical (tested against the official-order restatement in
# ``test/reference/official_geometry.py``).
# The camera-frame rays depend only on the image augmentation and are cached.

_RAY_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_RAY_CACHE_SIZE = 8
_RAY_CACHE_LOCK = threading.Lock()  # the node computes geometry on a worker thread


def _cache_get(key: tuple) -> np.ndarray | None:
    with _RAY_CACHE_LOCK:
        value = _RAY_CACHE.get(key)
        if value is not None:
            _RAY_CACHE.move_to_end(key)
        return value


def _cache_put(key: tuple, value: np.ndarray) -> None:
    value.setflags(write=False)
    with _RAY_CACHE_LOCK:
        _RAY_CACHE[key] = value
        while len(_RAY_CACHE) > _RAY_CACHE_SIZE:
            _RAY_CACHE.popitem(last=False)


def _frustum_columns(variant: ModelVariant) -> np.ndarray:
    """(3, N) float32 u, v, d of the frustum in (D, 16, 44) order (cached per variant)."""
    key = ("frustum", variant.name)
    cols = _cache_get(key)
    if cols is None:
        cols = np.ascontiguousarray(make_frustum(variant).numpy().reshape(-1, 3).T)
        _cache_put(key, cols)
    return cols


def _matvec(m: np.ndarray, x0: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> list[np.ndarray]:
    """Rows of ``m @ [x0, x1, x2]`` for a (3, 3) float32 ``m`` and (N,) float32 columns, in torch's CPU bmm order
    ``(m0*x0 + m1*x1) + m2*x2``, each operation rounded to float32 (numpy ufuncs never fuse into an FMA)."""
    rows = []
    tmp = np.empty_like(x0)
    for i in range(3):
        acc = np.multiply(x0, m[i, 0])
        acc += np.multiply(x1, m[i, 1], out=tmp)
        acc += np.multiply(x2, m[i, 2], out=tmp)
        rows.append(acc)
    return rows


def _camera_rays(variant: ModelVariant, inv_post_rot: np.ndarray, post_tran: np.ndarray) -> np.ndarray:
    """(3, N) float32 camera-frame points ``(x*z, y*z, z)`` with ``(x, y, z) = inv(post_rot) @ (uvd - post_tran)``
    for one camera's augmentation (cached: it changes only with the image size)."""
    key = ("rays", variant.name, inv_post_rot.tobytes(), post_tran.tobytes())
    rays = _cache_get(key)
    if rays is None:
        u, v, d = _frustum_columns(variant)
        x, y, z = _matvec(inv_post_rot, u - post_tran[0], v - post_tran[1], d - post_tran[2])
        rays = np.stack((x * z, y * z, z))
        _cache_put(key, rays)
    return rays


_INVERSE_CACHE: OrderedDict[bytes, torch.Tensor] = OrderedDict()
_INVERSE_CACHE_SIZE = 64


def _inverse(m: torch.Tensor) -> torch.Tensor:
    """``torch.inverse`` of a (K, 3, 3) float32 batch, one matrix at a time: the same LAPACK result as the batched
    call (checked in the tests) in ~0.03 ms per matrix instead of ~8 ms for the batched call on this CPU. Results
    are cached by the matrix's bytes (intrinsics and image augmentations rarely change; a moving vehicle changes
    only the poses)."""
    out = []
    for i in range(m.shape[0]):
        key = m[i].numpy().tobytes() if m.dtype == torch.float32 and m.device.type == "cpu" else None
        with _RAY_CACHE_LOCK:
            inv = _INVERSE_CACHE.get(key) if key is not None else None
        if inv is None:
            inv = torch.inverse(m[i])
            if key is not None:
                with _RAY_CACHE_LOCK:
                    _INVERSE_CACHE[key] = inv
                    while len(_INVERSE_CACHE) > _INVERSE_CACHE_SIZE:
                        _INVERSE_CACHE.popitem(last=False)
        out.append(inv)
    return torch.stack(out)


@dataclass(frozen=True, eq=False)
class _CameraTransform:
    """One camera's float32 inputs of the frustum transform: ``bda @ ((R @ inv(K)) @ rays + t)``, with the rays
    ``_camera_rays(inv_post_rot, post_tran)``. ``bda`` None: not applied (see ``_camera_ranks``)."""

    inv_post_rot: np.ndarray  # (3, 3)
    post_tran: np.ndarray  # (3,)
    combine: np.ndarray  # (3, 3) R @ inv(K)
    trans: np.ndarray  # (3,)
    bda: np.ndarray | None  # (3, 3)

    def key(self, variant: ModelVariant) -> tuple:
        arrays = (self.inv_post_rot, self.post_tran, self.combine, self.trans)
        return (variant.name, *(a.tobytes() for a in arrays), None if self.bda is None else self.bda.tobytes())


def _camera_transforms(sensor2keyego, intrinsics, post_rot, post_tran, bda) -> list[_CameraTransform]:
    """The six cameras' float32 transform inputs, computed as the official code does (``torch.inverse`` of each
    3x3, ``R @ inv(K)`` as a torch bmm)."""
    n = NUM_CAMERAS
    s2ke = _f32("sensor2keyego", sensor2keyego, (n, 4, 4))
    cam2img = _f32("intrinsics", intrinsics, (n, 3, 3))
    post_rot = _f32("post_rot", post_rot, (n, 3, 3))
    post_tran = _f32("post_tran", post_tran, (n, 3)).numpy()
    bda = np.eye(3, dtype=np.float32) if bda is None else _f32("bda", bda, (3, 3)).numpy()
    inv_post_rot = _inverse(post_rot).numpy()
    combine = s2ke[:, :3, :3].matmul(_inverse(cam2img)).numpy()  # (6, 3, 3): R @ inv(K), torch bmm as official
    trans = s2ke[:, :3, 3].numpy()
    return [_CameraTransform(inv_post_rot[c], post_tran[c], combine[c], trans[c], bda) for c in range(n)]


def _ego_points(variant: ModelVariant, cam: _CameraTransform) -> list[np.ndarray]:
    """[x, y, z]: key-ego coordinates of one camera's frustum points, (N,) float32 each (N = D*16*44, in
    (D, 16, 44) order), with the official float32 arithmetic."""
    rays = _camera_rays(variant, cam.inv_post_rot, cam.post_tran)
    ego = _matvec(cam.combine, *rays)
    for i in range(3):
        ego[i] += cam.trans[i]
    return ego if cam.bda is None else _matvec(cam.bda, *ego)


def _ego_points_per_camera(variant, sensor2keyego, intrinsics, post_rot, post_tran, bda):
    """Yield ``(camera, x, y, z)``: key-ego coordinates of the camera's frustum points, (N,) float32 each
    (N = D*16*44, in (D, 16, 44) order), with the official float32 arithmetic. One camera at a time keeps the
    working set in the CPU cache."""
    v = get_variant(variant) if isinstance(variant, str) else variant
    for c, cam in enumerate(_camera_transforms(sensor2keyego, intrinsics, post_rot, post_tran, bda)):
        yield (c, *_ego_points(v, cam))


def frustum_to_ego(variant, sensor2keyego, intrinsics, post_rot, post_tran, bda=None) -> torch.Tensor:
    """Key-ego xyz of every frustum point, (6, D, 16, 44, 3) float32; bit-identical to the official operation order
    (the official-order restatement in the tests), computed as a few vectorised float32 passes per camera."""
    cams = [
        np.stack(xyz, -1)
        for _, *xyz in _ego_points_per_camera(variant, sensor2keyego, intrinsics, post_rot, post_tran, bda)
    ]
    return torch.from_numpy(np.stack(cams).reshape(NUM_CAMERAS, -1, *FEATURE_HW, 3))


# Per-camera kept points and cells, keyed by the camera's transform inputs: on a moving vehicle the key camera's
# transform (CAM_FRONT_LEFT, the key ego) stays the same from frame to frame, and a camera whose inputs did not
# change is not recomputed. Two rigs' worth of entries.
_RANK_CACHE: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
_RANK_CACHE_SIZE = 2 * NUM_CAMERAS


def _camera_ranks(variant: ModelVariant, cam: _CameraTransform) -> tuple[np.ndarray, np.ndarray]:
    """(points, cells): the indices (into the camera's N frustum points) of the points inside the BEV grid, in
    increasing order, and their flat BEV cell ``iz * Dy * Dx + iy * Dx + ix``, both int32 (cached per camera
    transform, read-only).

    An identity ``bda`` is not applied: ``(1*x + 0*y) + 0*z`` equals ``x`` except for the sign of a zero (and
    NaN for an infinite coordinate), neither of which changes a truncated index or whether a point is kept.
    """
    if cam.bda is not None and np.array_equal(cam.bda, np.eye(3, dtype=np.float32)):
        cam = _CameraTransform(cam.inv_post_rot, cam.post_tran, cam.combine, cam.trans, None)
    key = ("ranks", *cam.key(variant))
    with _RAY_CACHE_LOCK:
        hit = _RANK_CACHE.get(key)
        if hit is not None:
            _RANK_CACHE.move_to_end(key)
            return hit
    dx, dy, dz = BEV_SIZE
    grid = _ego_points(variant, cam)
    for coord, lo, step in zip(grid, np.asarray(BEV_LOWER, np.float32), np.asarray(BEV_INTERVAL, np.float32)):
        coord -= lo
        coord /= step
    gx, gy, gz = grid
    # trunc(g) in [0, size)  <=>  -1 < g < size  (NaN is never kept, as NaN.long() is negative officially)
    kept = (gx > -1) & (gx < dx)
    kept &= gy > -1
    kept &= gy < dy
    kept &= gz > -1
    kept &= gz < dz
    with np.errstate(invalid="ignore"):  # NaN / out-of-range values of points that are not kept
        cells = gy.astype(np.int32)  # astype truncates toward zero, like .long()
        cells *= np.int32(dx)
        cells += gx.astype(np.int32)
        if dz > 1:  # with one z layer every kept point has iz == 0
            cells += gz.astype(np.int32) * np.int32(dy * dx)
    points = np.flatnonzero(kept).astype(np.int32)
    cells = cells[points]
    points.setflags(write=False)
    cells.setflags(write=False)
    with _RAY_CACHE_LOCK:
        _RANK_CACHE[key] = (points, cells)
        while len(_RANK_CACHE) > _RANK_CACHE_SIZE:
            _RANK_CACHE.popitem(last=False)
    return points, cells


def _feature_index_table(variant: ModelVariant) -> np.ndarray:
    """(6*N,) int32 flat feature-pixel index (camera * 16*44 + pixel) of every flat frustum point (cached)."""
    key = ("feat", variant.name)
    table = _cache_get(key)
    if table is None:
        n = _frustum_columns(variant).shape[1]
        flat = np.arange(NUM_CAMERAS * n, dtype=np.int32)
        pixels = np.int32(FEATURE_HW[0] * FEATURE_HW[1])
        table = (flat // np.int32(n)) * pixels + flat % pixels
        _cache_put(key, table)
    return table


def empty_pool_indices() -> PoolIndices:
    """Pool indices that lift nothing: the frame's BEV is all zeros (the official voxel pooling's answer, with a
    warning, when no frustum point falls inside the grid)."""
    e = torch.zeros(0, dtype=torch.int32)
    return PoolIndices(e, e.clone(), e.clone(), e.clone(), e.clone())


def compute_pool_indices(
    variant, sensor2keyego, intrinsics, post_rot, post_tran, bda=None, allow_empty: bool = False
) -> PoolIndices:
    """Quantise the frustum into the 200x200x1 LSS grid and build the bev_pool_v2 indices (int32).

    Indices use truncation toward zero, like the official voxel_pooling_prepare_v2 (``.long()``), on bit-identical
    float32 coordinates; points are ordered by cell and, inside a cell, by ``ranks_depth`` (a stable sort, so the
    result is deterministic; the official argsort is not, only the in-cell summation order differs). Equal to
    the official operation order element for element and fast enough to run every frame (ego motion; see
    benchmarks/bench_geometry.py). A camera whose transform inputs are those of a recent call (the key camera of a
    moving vehicle) reuses its kept points and cells.

    No point inside the grid is an error (a broken calibration) unless ``allow_empty`` (a temporal model's history
    frame that the vehicle has driven away from): then ``empty_pool_indices()``, whose BEV is zeros.
    """
    v = get_variant(variant) if isinstance(variant, str) else variant
    cams = _camera_transforms(sensor2keyego, intrinsics, post_rot, post_tran, bda)
    parts = [_camera_ranks(v, cam) for cam in cams]
    total = sum(points.size for points, _ in parts)
    if total == 0:
        if allow_empty:
            return empty_pool_indices()
        raise ValueError("calibration puts no frustum point inside the BEV grid; check intrinsics/extrinsics")
    points_per_camera = _frustum_columns(v).shape[1]
    dx, dy, dz = BEV_SIZE
    # Stable sort by cell (ties keep ranks_depth order); keys < 40,000 fit uint16, which numpy radix-sorts in O(M).
    small_keys = dx * dy * dz <= np.iinfo(np.uint16).max + 1
    cells = np.empty(total, dtype=np.uint16 if small_keys else np.int32)
    depth = np.empty(total, dtype=np.int32)  # flat index over (6, D, 16, 44)
    start = 0
    for c, (points, camera_cells) in enumerate(parts):
        end = start + points.size
        cells[start:end] = camera_cells
        np.add(points, np.int32(c * points_per_camera), out=depth[start:end])
        start = end
    order = np.argsort(cells, kind="stable")
    ranks_bev = cells[order].astype(np.int32)
    ranks_depth = depth[order]
    ranks_feat = _feature_index_table(v)[ranks_depth]
    interval_starts = np.flatnonzero(np.concatenate(([True], ranks_bev[1:] != ranks_bev[:-1]))).astype(np.int32)
    interval_lengths = np.diff(interval_starts, append=np.int32(total)).astype(np.int32)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32))

    return PoolIndices(t(ranks_bev), t(ranks_depth), t(ranks_feat), t(interval_starts), t(interval_lengths))


def bev_pool(depth: torch.Tensor, context: torch.Tensor, pool: PoolIndices | tuple) -> torch.Tensor:
    """Sum-pool ``depth_prob x context`` of every kept frustum point into its BEV cell -> (1, C, 200, 200).

    depth: (6, D, 16, 44) (or (1, 6, D, 16, 44)) probabilities; context: (6, C, 16, 44) features.
    ``pool`` is a PoolIndices or the tuple (ranks_bev, ranks_depth, ranks_feat[, ...]).
    Pure torch (index_select + scatter_add: ONNX Gather + ScatterElements(reduction=add), opset >= 16), runs on
    CPU and CUDA.
    The result is a (1, C, Dy, Dx) view in channels_last memory (cell rows are contiguous).
    """
    ranks_bev, ranks_depth, ranks_feat = pool.as_tuple()[:3] if isinstance(pool, PoolIndices) else tuple(pool)[:3]
    num_ch = context.shape[-3]
    feat_rows = context.reshape(-1, num_ch, context.shape[-2] * context.shape[-1]).transpose(1, 2)
    feat_rows = feat_rows.reshape(-1, num_ch)
    terms = (
        feat_rows.index_select(0, ranks_feat.long()) * depth.reshape(-1).index_select(0, ranks_depth.long())[:, None]
    )
    dx, dy, _ = BEV_SIZE
    out = torch.zeros(dy * dx, num_ch, dtype=context.dtype, device=context.device)
    out = out.scatter_add(0, ranks_bev.long()[:, None].expand(-1, num_ch), terms)
    return out.view(1, dy, dx, num_ch).permute(0, 3, 1, 2)


def bev_pool_csr(depth: torch.Tensor, context: torch.Tensor, pool: PoolIndices) -> torch.Tensor:
    """Same result as ``bev_pool`` computed as a sparse (cells x pixels) @ dense (pixels x C) product.

    Avoids the (M, C) temporary of the gather formulation (faster on CPU); not ONNX-exportable, so
    ``bev_pool`` stays the export path. Summation order inside a cell may differ from ``bev_pool`` (last ulp).
    """
    num_ch = context.shape[-3]
    feat_rows = context.reshape(-1, num_ch, context.shape[-2] * context.shape[-1]).transpose(1, 2)
    feat_rows = feat_rows.reshape(-1, num_ch)
    key = (str(context.device), feat_rows.shape[0])
    cached = pool._csr.get(key)
    if cached is None:
        dx, dy, _ = BEV_SIZE
        crow = torch.zeros(dy * dx + 1, dtype=torch.int64)
        crow.index_add_(0, pool.ranks_bev.long() + 1, torch.ones_like(pool.ranks_bev, dtype=torch.int64))
        crow = crow.cumsum(0)
        cached = (
            crow.to(context.device),
            pool.ranks_feat.long().to(context.device),
            pool.ranks_depth.long().to(context.device),
        )
        pool._csr[key] = cached
    crow, col, ranks_depth = cached
    values = depth.reshape(-1).index_select(0, ranks_depth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        mat = torch.sparse_csr_tensor(
            crow, col, values, size=(crow.numel() - 1, feat_rows.shape[0]), check_invariants=False
        )
        out = mat @ feat_rows
    dx, dy, _ = BEV_SIZE
    return out.view(1, dy, dx, num_ch).permute(0, 3, 1, 2)


def make_mlp_input(sensor2keyego, intrinsics, post_rot, post_tran, bda=None) -> torch.Tensor:
    """BEVDepth camera-aware input (1, 6, 27) float32: fx, fy, cx, cy, post_rot/post_tran terms, bda terms,
    then sensor2keyego[:3, :4] row-major (SPEC section 3)."""
    n = NUM_CAMERAS
    s2ke = _f32("sensor2keyego", sensor2keyego, (n, 4, 4))
    k = _f32("intrinsics", intrinsics, (n, 3, 3))
    pr = _f32("post_rot", post_rot, (n, 3, 3))
    pt = _f32("post_tran", post_tran, (n, 3))
    b = (torch.eye(3) if bda is None else _f32("bda", bda, (3, 3))).view(1, 3, 3).expand(n, 3, 3)
    cols = [
        k[:, 0, 0],
        k[:, 1, 1],
        k[:, 0, 2],
        k[:, 1, 2],
        pr[:, 0, 0],
        pr[:, 0, 1],
        pt[:, 0],
        pr[:, 1, 0],
        pr[:, 1, 1],
        pt[:, 1],
        b[:, 0, 0],
        b[:, 0, 1],
        b[:, 1, 0],
        b[:, 1, 1],
        b[:, 2, 2],
    ]
    mlp = torch.cat([torch.stack(cols, dim=-1), s2ke[:, :3, :].reshape(n, 12)], dim=-1)
    return mlp.unsqueeze(0).contiguous()


@dataclass
class GeometryInputs:
    """Everything the network needs besides the images, for one rig: pool indices and (BEVDepth) mlp_input."""

    pool: PoolIndices
    mlp_input: torch.Tensor | None
    sensor2keyego: np.ndarray


def prepare_geometry(variant, calib: RigCalibration, post_rot=None, post_tran=None, bda=None) -> GeometryInputs:
    """Pool indices + mlp_input for a rig; post_rot/post_tran default to the test-time augmentation of
    ``calib.image_hw`` (see preprocess.augmentation_for)."""
    v = get_variant(variant) if isinstance(variant, str) else variant
    if post_rot is None or post_tran is None:
        from flashocc_ros.network.preprocess import augmentation_for

        aug = augmentation_for(calib.image_hw)
        post_rot = np.broadcast_to(aug.post_rot, (NUM_CAMERAS, 3, 3)) if post_rot is None else post_rot
        post_tran = np.broadcast_to(aug.post_tran, (NUM_CAMERAS, 3)) if post_tran is None else post_tran
    s2ke = calib.sensor2keyego()
    pool = compute_pool_indices(v, s2ke, calib.intrinsics, post_rot, post_tran, bda)
    mlp = make_mlp_input(s2ke, calib.intrinsics, post_rot, post_tran, bda) if v.depth_net == "bevdepth" else None
    return GeometryInputs(pool=pool, mlp_input=mlp, sensor2keyego=s2ke)


class PoolIndexCache:
    """LRU cache of ``prepare_geometry`` keyed by variant + calibration fingerprint (rigs rarely change)."""

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], GeometryInputs] = OrderedDict()
        self.misses = 0

    def get(self, variant, calib: RigCalibration) -> GeometryInputs:
        name = variant if isinstance(variant, str) else variant.name
        key = (get_variant(name).name, calib.fingerprint())
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        geo = prepare_geometry(name, calib)
        self._entries[key] = geo
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return geo


# --------------------------------------------------------------------------------------------------------------
# Reference rig: real nuScenes calibration of sample fd8420396768425eabec9bdddf7e64b6 (mmdetection3d v1.0.0rc4
# test data), the rig of the golden data. Quaternions (w, x, y, z) as stored by nuScenes.
# --------------------------------------------------------------------------------------------------------------

REFERENCE_SAMPLE_TOKEN = "fd8420396768425eabec9bdddf7e64b6"
_REFERENCE_RIG = {
    "CAM_FRONT_LEFT": (
        (1.52387798135, 0.494631336551, 1.50932822144),
        (0.6757265034669446, -0.6736266522251881, 0.21214015046209478, -0.21122827103904068),
        (249.9010710170623, 917.551270026704, 0.0),
        (0.9984418312826709, -0.008654774439473843, 0.0024989952571667228, -0.05507049524938595),
        (1272.5979470598488, 1272.5979470598488, 826.6154927353808, 479.75165386361925),
    ),
    "CAM_FRONT": (
        (1.70079118954, 0.0159456324149, 1.51095763913),
        (0.4998015430569128, -0.5030316162024876, 0.4997798114386805, -0.49737083824542755),
        (249.90018228466124, 917.5514452794962, 0.0),
        (0.9984397071954904, -0.008652973321832425, 0.002523596051210081, -0.05510815376190409),
        (1266.417203046554, 1266.417203046554, 816.2670197447984, 491.50706579294757),
    ),
    "CAM_FRONT_RIGHT": (
        (1.5508477543, -0.493404796419, 1.49574800619),
        (0.2060347966337182, -0.2026940577919598, 0.6824507824531167, -0.6713610884174485),
        (249.89927564971845, 917.551624895163, 0.0),
        (0.9984375579351017, -0.008651103397212567, 0.002549137623400073, -0.05514619852699021),
        (1260.8474446004698, 1260.8474446004698, 807.968244525554, 495.3344268742088),
    ),
    "CAM_BACK_LEFT": (
        (1.03569100218, 0.484795032713, 1.59097014818),
        (0.6924185592174665, -0.7031619420114925, -0.11648342771943819, 0.11203317912370753),
        (249.89634250730177, 917.5522138873966, 0.0),
        (0.9984307585239696, -0.008637853286353251, 0.0025761251065602453, -0.05526998736466382),
        (1256.7414812095406, 1256.7414812095406, 792.1125740759628, 492.7757465151356),
    ),
    "CAM_BACK": (
        (0.0283260309358, 0.00345136761476, 1.57910346144),
        (0.5037872666382278, -0.49740249788611096, -0.4941850223835201, 0.5045496097725578),
        (249.89736184222724, 917.5520072342415, 0.0),
        (0.9984331635420973, -0.008647395174029798, 0.002563918547139692, -0.055225599296953864),
        (809.2209905677063, 809.2209905677063, 829.2196003259838, 481.77842384512485),
    ),
    "CAM_BACK_RIGHT": (
        (1.0148780988, -0.480568219723, 1.56239545128),
        (0.12280980120078765, -0.132400842670559, -0.7004305821388234, 0.690496031265798),
        (249.89843418721884, 917.5517929583903, 0.0),
        (0.9984356122615022, -0.008651581535513505, 0.0025536531302165775, -0.0551811304761371),
        (1259.5137405846733, 1259.5137405846733, 807.2529053838625, 501.19579884916527),
    ),
}


def pose_matrix(quaternion, translation) -> np.ndarray:
    """4x4 float64 transform from a (w, x, y, z) quaternion and a translation."""
    w, x, y, z = quaternion
    return rigid(quaternion_xyzw_to_matrix(x, y, z, w), translation)


def reference_rig(float32: bool = True) -> RigCalibration:
    """The nuScenes rig of the golden data, with values rounded to float32 like the golden inputs
    (``float32=False``: the float64 values, as TF or the nuScenes tables give them)."""
    dtype = np.float32 if float32 else np.float64
    s2e, e2g, ks = [], [], []
    for cam in CAMERA_NAMES:
        s2e_t, s2e_q, e2g_t, e2g_q, (fx, fy, cx, cy) = _REFERENCE_RIG[cam]
        s2e.append(pose_matrix(s2e_q, s2e_t).astype(dtype))
        e2g.append(pose_matrix(e2g_q, e2g_t).astype(dtype))
        ks.append(np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype))
    return RigCalibration(intrinsics=np.stack(ks), sensor2ego=np.stack(s2e), ego2global=np.stack(e2g))
