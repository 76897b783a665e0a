"""The official BEVDet/FlashOcc geometry, restated in its literal operation order (broadcast batched torch
``matmul`` per frustum point, ``torch.inverse`` on 3x3, truncating ``.long()``, stable argsort), as in
``view_transformer.get_ego_coor`` and ``voxel_pooling_prepare_v2``. Slow; it is the reference that the vectorised
``flashocc_ros.network.geometry.compute_pool_indices`` is tested and benchmarked against."""

from __future__ import annotations

import torch

from flashocc_ros.network.geometry import (
    BEV_INTERVAL,
    BEV_LOWER,
    BEV_SIZE,
    NUM_CAMERAS,
    PoolIndices,
    _f32,
    make_frustum,
)


def frustum_to_ego_reference(variant, sensor2keyego, intrinsics, post_rot, post_tran, bda=None) -> torch.Tensor:
    """Key-ego xyz of every frustum point, (6, D, 16, 44, 3) float32, written as the official code does it
    (broadcast batched 3x3 ``matmul`` per point). Slow (~100 ms for M0 on 2 cores: one tiny matmul per point);
    kept as the executable statement of the official arithmetic that ``frustum_to_ego`` is tested against."""
    n = NUM_CAMERAS
    s2ke = _f32("sensor2keyego", sensor2keyego, (n, 4, 4))
    cam2img = _f32("intrinsics", intrinsics, (n, 3, 3))
    post_rot = _f32("post_rot", post_rot, (n, 3, 3))
    post_tran = _f32("post_tran", post_tran, (n, 3))
    bda = torch.eye(3) if bda is None else _f32("bda", bda, (3, 3))
    frustum = make_frustum(variant)
    points = frustum - post_tran.view(n, 1, 1, 1, 3)
    points = torch.inverse(post_rot).view(n, 1, 1, 1, 3, 3).matmul(points.unsqueeze(-1))
    points = torch.cat((points[..., :2, :] * points[..., 2:3, :], points[..., 2:3, :]), 4)
    combine = s2ke[:, :3, :3].matmul(torch.inverse(cam2img))
    points = combine.view(n, 1, 1, 1, 3, 3).matmul(points).squeeze(-1)
    points = points + s2ke[:, :3, 3].view(n, 1, 1, 1, 3)
    points = bda.view(1, 1, 1, 1, 3, 3).matmul(points.unsqueeze(-1)).squeeze(-1)
    return points


def compute_pool_indices_reference(variant, sensor2keyego, intrinsics, post_rot, post_tran, bda=None) -> PoolIndices:
    """``compute_pool_indices`` written as the official voxel_pooling_prepare_v2 (torch, batched matmuls, stable
    argsort). Slow; kept as the reference the fast implementation is tested and benchmarked against."""
    coor = frustum_to_ego_reference(variant, sensor2keyego, intrinsics, post_rot, post_tran, bda)
    n, d, h, w, _ = coor.shape
    num_points = n * d * h * w
    ranks_depth = torch.arange(num_points, dtype=torch.int64)
    ranks_feat = torch.arange(n * h * w, dtype=torch.int64).view(n, 1, h, w).expand(n, d, h, w).reshape(-1)
    lower = torch.tensor(BEV_LOWER, dtype=torch.float32)
    interval = torch.tensor(BEV_INTERVAL, dtype=torch.float32)
    idx = ((coor - lower) / interval).long().view(num_points, 3)
    dx, dy, dz = BEV_SIZE
    kept = (
        (idx[:, 0] >= 0) & (idx[:, 0] < dx) & (idx[:, 1] >= 0) & (idx[:, 1] < dy) & (idx[:, 2] >= 0) & (idx[:, 2] < dz)
    )
    idx, ranks_depth, ranks_feat = idx[kept], ranks_depth[kept], ranks_feat[kept]
    ranks_bev = idx[:, 2] * (dy * dx) + idx[:, 1] * dx + idx[:, 0]
    order = torch.argsort(ranks_bev, stable=True)
    ranks_bev, ranks_depth, ranks_feat = ranks_bev[order], ranks_depth[order], ranks_feat[order]
    if ranks_bev.numel() == 0:
        raise ValueError("calibration puts no frustum point inside the BEV grid; check intrinsics/extrinsics")
    starts_mask = torch.ones_like(ranks_bev, dtype=torch.bool)
    starts_mask[1:] = ranks_bev[1:] != ranks_bev[:-1]
    interval_starts = torch.nonzero(starts_mask).flatten()
    interval_lengths = torch.empty_like(interval_starts)
    interval_lengths[:-1] = interval_starts[1:] - interval_starts[:-1]
    interval_lengths[-1] = ranks_bev.numel() - interval_starts[-1]
    return PoolIndices(
        ranks_bev.int(), ranks_depth.int(), ranks_feat.int(), interval_starts.int(), interval_lengths.int()
    )
