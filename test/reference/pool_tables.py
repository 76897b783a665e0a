"""Test reference: the gather tables of flashocc_ros.backends.pooling built another way (the package's earlier
implementation, kept here as the restatement the faster one is compared with)."""

from __future__ import annotations

import numpy as np
import torch

from flashocc_ros.backends.pooling import NUM_BEV_CELLS, SLOT_WIDTH, PoolTables, depth_size
from flashocc_ros.network.geometry import PoolIndices


def np64(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=np.int64).reshape(-1)


def slot_matrix_tables(pool: PoolIndices, depth_bins: int, width: int = SLOT_WIDTH) -> PoolTables:
    """The pooling tables built row by row from a (rows, width) slot matrix: for each row its cell, its first point
    and its length, then every slot's point (or padding). An independent restatement of
    ``flashocc_ros.backends.pooling.pool_tables_from_indices`` (which scatters each point to its slot)."""
    ranks_depth = np64(pool.ranks_depth)
    ranks_feat = np64(pool.ranks_feat)
    ranks_bev = np64(pool.ranks_bev)
    starts = np64(pool.interval_starts)
    lengths = np64(pool.interval_lengths)
    num_points = ranks_depth.size
    if num_points == 0 or starts.size == 0:
        raise ValueError("pool indices are empty: no frustum point falls inside the BEV grid")
    if np.any(lengths <= 0) or int(lengths.sum()) != num_points:
        raise ValueError("pool indices: interval_lengths must be positive and sum to the number of points")
    n_depth = depth_size(depth_bins)
    if ranks_depth.max() >= n_depth or ranks_depth.min() < 0:
        raise ValueError(f"pool indices: ranks_depth outside [0, {n_depth}) for {depth_bins} depth bins")
    rows_per_cell = (lengths + width - 1) // width
    num_rows = int(rows_per_cell.sum())
    row_cell = np.repeat(np.arange(starts.size), rows_per_cell)
    first_row = np.cumsum(rows_per_cell) - rows_per_cell
    row_in_cell = np.arange(num_rows) - first_row[row_cell]
    row_start = starts[row_cell] + row_in_cell * width
    row_len = np.minimum(width, lengths[row_cell] - row_in_cell * width)
    slot = row_start[:, None] + np.arange(width)[None, :]
    valid = np.arange(width)[None, :] < row_len[:, None]
    slot = np.minimum(slot, num_points - 1)
    depth_index = np.where(valid, ranks_depth[slot], n_depth)
    feat_index = np.where(valid, ranks_feat[slot], 0)
    j = int(rows_per_cell.max())
    cell_rows = np.where(np.arange(j)[None, :] < rows_per_cell[:, None], first_row[:, None] + np.arange(j), num_rows)
    bev_cell = np.full(NUM_BEV_CELLS, starts.size, dtype=np.int64)
    cells = ranks_bev[starts]
    if cells.min() < 0 or cells.max() >= NUM_BEV_CELLS or np.unique(cells).size != cells.size:
        raise ValueError("pool indices: ranks_bev must be sorted, unique per interval and inside the 200x200 grid")
    bev_cell[cells] = np.arange(starts.size)
    return PoolTables(
        *(np.ascontiguousarray(a, dtype=np.int32) for a in (depth_index, feat_index, cell_rows, bev_cell))
    )
