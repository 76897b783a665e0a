"""Gather-table BEV pooling: equal to geometry.bev_pool, exports to standard ops, and validates its indices."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from flashocc_ros.backends.pooling import SLOT_WIDTH, gather_pool, pool_tables_from_indices
from flashocc_ros.network.geometry import PoolIndices, bev_pool
from test.backends.exports import reference_geometry


@pytest.mark.parametrize("short, depth_bins, channels", [("M0", 44, 64), ("PF", 88, 80)])
def test_gather_pool_equals_bev_pool(short, depth_bins, channels):
    pool = reference_geometry(short).pool
    tables = pool_tables_from_indices(pool, depth_bins)
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(6, depth_bins, 16, 44, generator=gen).softmax(1)
    context = torch.randn(6, channels, 16, 44, generator=gen)
    ref = bev_pool(depth, context, pool)
    out = gather_pool(depth, context, *(torch.from_numpy(a) for a in tables.as_inputs().values()))
    assert out.shape == (1, channels, 200, 200)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)  # float summation order only
    # table invariants: every kept point appears exactly once; empty cells map to the zero row
    valid = tables.depth_index < 6 * depth_bins * 16 * 44
    assert int(valid.sum()) == pool.num_points
    assert sorted(tables.depth_index[valid].tolist()) == sorted(pool.ranks_depth.tolist())
    assert tables.depth_index.shape[1] == SLOT_WIDTH
    assert int((tables.bev_cell < tables.num_cells).sum()) == pool.num_cells


def test_gather_pool_exports_without_scatter():
    import onnx
    import onnxruntime as ort

    pool = reference_geometry("M0").pool
    tables = [torch.from_numpy(a) for a in pool_tables_from_indices(pool, 44).as_inputs().values()]
    gen = torch.Generator().manual_seed(1)
    depth, context = torch.rand(6, 44, 16, 44, generator=gen), torch.randn(6, 64, 16, 44, generator=gen)

    class Pool(torch.nn.Module):
        def forward(self, d, c, a, b, e, f):
            return gather_pool(d, c, a, b, e, f)

    buf = io.BytesIO()
    names = ["d", "c", "a", "b", "e", "f"]
    torch.onnx.export(Pool(), (depth, context, *tables), buf, dynamo=False, opset_version=17, input_names=names,
                      dynamic_axes={"a": {0: "r"}, "b": {0: "r"}, "e": {0: "n", 1: "j"}})  # fmt: skip
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert ops <= {"Concat", "Constant", "Gather", "MatMul", "ReduceSum", "Reshape", "Shape", "Transpose", "Unsqueeze"}
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    feeds = dict(zip(names, [depth.numpy(), context.numpy(), *(t.numpy() for t in tables)]))
    np.testing.assert_allclose(sess.run(None, feeds)[0], bev_pool(depth, context, pool).numpy(), rtol=1e-5, atol=1e-4)


def _pool(ranks_bev, ranks_depth, lengths):
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    t = [torch.tensor(x, dtype=torch.int32) for x in (ranks_bev, ranks_depth, ranks_depth, starts, lengths)]
    return PoolIndices(*t)


def test_tables_of_a_small_hand_made_pool():
    # cell 5 gets 20 points (two rows), cell 7 gets 1 point
    pool = _pool([5] * 20 + [7], list(range(21)), [20, 1])
    t = pool_tables_from_indices(pool, 44)
    assert t.num_rows == 3 and t.num_cells == 2 and t.rows_per_cell == 2
    assert t.cell_rows.tolist() == [[0, 1], [2, 3]]  # 3 = the zero row
    assert t.bev_cell[5] == 0 and t.bev_cell[7] == 1 and t.bev_cell[0] == 2
    sentinel = 6 * 44 * 16 * 44
    assert t.depth_index[1].tolist() == [16, 17, 18, 19] + [sentinel] * 12


@pytest.mark.parametrize(
    "args, message",
    [
        (([], [], [0]), "empty|positive"),
        (([5, 5], [0, 1], [1]), "sum to the number of points"),
        (([5, 5], [0, 10**7], [2]), "ranks_depth outside"),
        (([40000], [0], [1]), "inside the 200x200 grid"),
    ],
)
def test_invalid_pool_indices_are_rejected(args, message):
    bev, dep, lengths = args
    pool = (
        _pool(bev, dep, lengths)
        if bev
        else PoolIndices(
            *(torch.zeros(0, dtype=torch.int32) for _ in range(3)),
            torch.zeros(0, dtype=torch.int32),
            torch.zeros(0, dtype=torch.int32),
        )  # fmt: skip
    )
    with pytest.raises(ValueError, match=message):
        pool_tables_from_indices(pool, 44)


def _random_pool(seed: int) -> PoolIndices:
    """Random sorted cells with lengths around the row width (1, 15, 16, 17, 32, 33, ...)."""
    rng = np.random.default_rng(seed)
    cells = np.sort(rng.choice(200 * 200, size=300, replace=False))
    lengths = rng.choice([1, 2, 15, 16, 17, 31, 32, 33, 50], size=cells.size)
    n = int(lengths.sum())
    return _pool(np.repeat(cells, lengths), rng.integers(0, 6 * 44 * 16 * 44, n), lengths)


@pytest.mark.parametrize("case", ["M0", "PF", "M0-moved", "random-0", "random-1"])
def test_tables_equal_the_slot_matrix_restatement(case):
    from flashocc_ros.network.geometry import RigCalibration, prepare_geometry, reference_rig
    from test.reference.pool_tables import slot_matrix_tables

    if case.startswith("random"):
        pool, depth_bins = _random_pool(int(case[-1])), 44
    elif case == "M0-moved":
        rig = reference_rig()
        ego = np.stack([np.eye(4)] * 6)
        ego[:, 0, 3] = [0.0, 0.2, 0.4, 0.1, 0.3, 0.5]  # per-camera ego poses of a moving vehicle
        ego[:, 1, 3] = 0.05
        pool = prepare_geometry("M0", RigCalibration(rig.intrinsics, rig.sensor2ego, ego, rig.image_hw)).pool
        depth_bins = 44
    else:
        pool, depth_bins = reference_geometry(case).pool, (44 if case == "M0" else 88)
    got, want = pool_tables_from_indices(pool, depth_bins), slot_matrix_tables(pool, depth_bins)
    for name, a in got.as_inputs().items():
        b = want.as_inputs()[name]
        assert a.dtype == np.int32 and a.flags.c_contiguous, name
        np.testing.assert_array_equal(a, b, err_msg=name)
