"""Panoptic post-processing: official-mode parity with the golden references, corrected-mode properties, edge cases,
strategy and device agreement."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from flashocc_ros.config import FIRST_INSTANCE_ID, FREE_INDEX, HEAD_TO_OCC, OCC_GRID
from flashocc_ros.network.panoptic import (
    OFFICIAL_HEAD_TO_OCC,
    assign_instances,
    center_tensors,
    official_center_voxels,
    official_sort_indices,
)

DATA = Path(__file__).resolve().parents[1] / "data"
UNIT = DATA / "panoptic" / "pano_postproc_unit.npz"
PT_PYTHON_BRANCH = DATA / "panoptic" / "panoptic-flashocc-r50-depth-tiny-pano_seed0_pano_python_branch.npz"
GOLDEN = {
    "PT": DATA / "golden" / "panoptic-flashocc-r50-depth-tiny-pano_seed0.npz",
    "PF": DATA / "golden" / "panoptic-flashocc-r50-depth-pano_seed0.npz",
}
PYTHON_BRANCH_CLASSES = (2, 3, 4, 5, 6, 7, 9, 10)  # official inst_class_ids


@dataclass
class DuckCenters:
    xyz: np.ndarray
    score: np.ndarray
    label: np.ndarray


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def unit():
    return _load(UNIT)


@pytest.fixture(scope="module", params=sorted(GOLDEN))
def golden(request):
    return _load(GOLDEN[request.param])


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """a and b are equal up to a bijective renaming of the instance ids (values >= 18); other values equal."""
    a, b = a.ravel(), b.ravel()
    inst_a, inst_b = a >= FIRST_INSTANCE_ID, b >= FIRST_INSTANCE_ID
    if not np.array_equal(inst_a, inst_b) or not np.array_equal(a[~inst_a], b[~inst_b]):
        return False
    pairs = np.unique(np.stack([a[inst_a], b[inst_b]], 1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


def _centers(d, n=None):
    sl = slice(None) if n is None else slice(0, n)
    return DuckCenters(d["centers_xyz"][sl], d["centers_score"][sl], d["centers_label"][sl])


def _grid(fill=FREE_INDEX):
    return np.full(OCC_GRID.shape, fill, dtype=np.uint8)


# ------------------------------------------------------------------------------------------------------------------
# Official mode: parity with the references
# ------------------------------------------------------------------------------------------------------------------


def test_official_center_quantisation_matches_reference(unit):
    assert np.array_equal(official_center_voxels(torch.from_numpy(unit["centers_xyz"])).numpy(), unit["inst_xyz"])
    pt = _load(GOLDEN["PT"])
    ref = _load(PT_PYTHON_BRANCH)["inst_xyz"]
    assert np.array_equal(official_center_voxels(torch.from_numpy(pt["centers_xyz"])).numpy(), ref)


def test_official_unit_exact_ids_with_reference_sort_order(unit):
    res = assign_instances(unit["occ_label"], unit, "official", sort_indices=unit["sort_indices_used"])
    assert res.panoptic.dtype == torch.int32
    assert np.array_equal(res.panoptic.numpy(), unit["pano_inst_cuda_semantics"])
    # The erasure quirk is exercised: barrier / traffic_cone voxels became 0.
    erased = (res.panoptic.numpy() == 0) & np.isin(unit["occ_label"], (1, 8))
    assert erased.sum() > 0


def test_official_unit_default_sort(unit):
    res = assign_instances(unit["occ_label"], _centers(unit), "official")
    assert _same_partition(res.panoptic.numpy(), unit["pano_inst_cuda_semantics"])
    label = torch.from_numpy(unit["centers_label"])
    if np.array_equal(official_sort_indices(label).numpy(), unit["sort_indices_used"]):  # same torch sort
        assert np.array_equal(res.panoptic.numpy(), unit["pano_inst_cuda_semantics"])


def test_official_network_goldens(golden):
    res = assign_instances(torch.from_numpy(golden["occ_label"]), _centers(golden), "official")
    got = res.panoptic.numpy()
    assert _same_partition(got, golden["pano_inst"])
    # torch's CPU sort reproduces the reference numbering (same torch as the golden run).
    assert np.array_equal(got, golden["pano_inst"])


def test_official_same_partition_as_python_branch_on_thing_classes(unit):
    for sem, centers, ref in (
        (unit["occ_label"], _centers(unit), unit["pano_inst_python_branch"]),
        (
            _load(GOLDEN["PT"])["occ_label"],
            _centers(_load(GOLDEN["PT"])),
            _load(PT_PYTHON_BRANCH)["pano_inst_python_branch"],
        ),
    ):
        got = assign_instances(sem, centers, "official").panoptic.numpy()
        inst = np.isin(sem, PYTHON_BRANCH_CLASSES) & (ref >= FIRST_INSTANCE_ID)
        assert inst.sum() > 0
        assert _same_partition(np.where(inst, got, 0), np.where(inst, ref, 0))


def test_official_instance_table(unit):
    res = assign_instances(unit["occ_label"], unit, "official", sort_indices=unit["sort_indices_used"])
    table = res.instances.numpy()
    assert len(table) == len(unit["centers_label"])
    assert sorted(table.id.tolist()) == list(range(FIRST_INSTANCE_ID, FIRST_INSTANCE_ID + len(table)))
    ids, counts = np.unique(unit["pano_inst_cuda_semantics"], return_counts=True)
    ref_counts = dict(zip(ids.tolist(), counts.tolist()))
    for row in table.rows():
        assert row["voxel_count"] == ref_counts.get(row["id"], 0)
    # the official (mis-paired) class table: head class 5 (barrier) claims occupancy bicycle (2)
    j = int(np.nonzero(unit["centers_label"] == 5)[0][0])
    row = table.id.tolist().index(FIRST_INSTANCE_ID + int(unit["sort_indices_used"][j]))
    assert table.occ_class[row] == OFFICIAL_HEAD_TO_OCC[5] == 2


# ------------------------------------------------------------------------------------------------------------------
# Corrected mode
# ------------------------------------------------------------------------------------------------------------------


def _voxel_centers(idx: np.ndarray) -> np.ndarray:
    lower = np.asarray(OCC_GRID.lower)
    return lower + OCC_GRID.voxel_size * (idx + 0.5)


@pytest.mark.parametrize("source", ["unit", "PT"])
def test_corrected_properties(source, unit):
    d = unit if source == "unit" else _load(GOLDEN["PT"])
    sem = d["occ_label"]
    res = assign_instances(sem, _centers(d), "corrected")
    pano = res.panoptic.numpy()
    table = res.instances.numpy()
    k = len(d["centers_label"])
    assert table.id.tolist() == list(range(FIRST_INSTANCE_ID, FIRST_INSTANCE_ID + k))  # consecutive
    assert np.all(np.diff(table.score) <= 0)  # score order
    assert np.array_equal(
        table.occ_class,
        np.asarray(HEAD_TO_OCC)[d["centers_label"].astype(int)][np.argsort(-d["centers_score"], kind="stable")],
    )
    assert not np.any((pano == 0) & (sem != 0))  # never erases
    occ_of_id = dict(zip(table.id.tolist(), table.occ_class.tolist()))
    present = set(table.occ_class.tolist())
    for cls in range(1, 11):
        mask = sem == cls
        if cls in present:  # every voxel of the class got a centre of its own class ...
            ids = pano[mask]
            assert np.all(ids >= FIRST_INSTANCE_ID)
            assert {occ_of_id[i] for i in np.unique(ids).tolist()} == {cls}
        else:  # ... or keeps its label
            assert np.array_equal(pano[mask], sem[mask])
    stuff = sem > 10
    assert np.array_equal(pano[stuff], sem[stuff])
    counts = dict(zip(*np.unique(pano[pano >= FIRST_INSTANCE_ID], return_counts=True)))
    assert table.voxel_count.tolist() == [counts.get(i, 0) for i in table.id.tolist()]
    # nearest: brute force over a sample of voxels (float64; float32 rounding can only matter at exact ties)
    rng = np.random.default_rng(0)
    vox = np.argwhere(pano >= FIRST_INSTANCE_ID)
    vox = vox[rng.choice(len(vox), size=min(3000, len(vox)), replace=False)]
    pos = _voxel_centers(vox)
    chosen = table.center_xyz[pano[tuple(vox.T)] - FIRST_INSTANCE_ID].astype(np.float64)
    d_chosen = ((pos - chosen) ** 2).sum(1)
    for i, v in enumerate(vox):
        same = table.occ_class == sem[tuple(v)]
        d_all = ((table.center_xyz[same].astype(np.float64) - pos[i]) ** 2).sum(1)
        assert d_chosen[i] <= d_all.min() + 1e-4


def test_corrected_differs_from_official_pairing(unit):
    """Occupancy bicycle voxels take bicycle-head centres in corrected mode, barrier-head centres in official."""
    sem = _grid()
    sem[100, 100, 5] = 2  # bicycle voxel
    xyz = np.array([[0.2, 0.2, 1.2], [0.2, 0.2, 1.2]], np.float32)
    centers = DuckCenters(xyz, np.array([0.9, 0.8], np.float32), np.array([5, 7], np.float32))  # barrier, bicycle
    corr = assign_instances(sem, centers, "corrected")
    off = assign_instances(sem, centers, "official")
    assert int(corr.panoptic[100, 100, 5]) == FIRST_INSTANCE_ID + 1  # the bicycle centre (second in score order)
    assert int(off.panoptic[100, 100, 5]) == FIRST_INSTANCE_ID  # the barrier centre: 18 + argsort([5, 7])[0]
    assert off.instances.numpy().rows()[0]["occ_class"] == 2


# ------------------------------------------------------------------------------------------------------------------
# Edge cases
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["official", "corrected"])
def test_no_centers(mode, unit):
    for centers in (None, DuckCenters(np.zeros((0, 3), np.float32), np.zeros(0, np.float32), np.zeros(0))):
        res = assign_instances(unit["occ_label"], centers, mode)
        assert np.array_equal(res.panoptic.numpy(), unit["occ_label"])
        assert len(res.instances) == 0 and len(res.instances.numpy()) == 0


@pytest.mark.parametrize("mode", ["official", "corrected"])
def test_all_free_grid(mode, unit):
    res = assign_instances(_grid(), _centers(unit), mode)
    assert np.all(res.panoptic.numpy() == FREE_INDEX)
    assert len(res.instances) == len(unit["centers_label"])
    assert res.instances.voxel_count.sum() == 0


@pytest.mark.parametrize("mode", ["official", "corrected"])
def test_class_with_centers_but_no_voxels(mode):
    sem = _grid()
    sem[10:20, 10:20, 2:4] = 4  # car voxels only
    xyz = np.array([[-34.0, -34.0, 0.0], [30.0, 30.0, 1.0]], np.float32)
    centers = DuckCenters(xyz, np.array([0.9, 0.5], np.float32), np.array([0, 3], np.float32))  # car, bus
    table = assign_instances(sem, centers, mode).instances.numpy()
    by_class = {r["occ_class"]: r for r in table.rows()}
    assert by_class[4]["voxel_count"] == 200 and by_class[3]["voxel_count"] == 0


def test_centers_outside_the_grid():
    sem = _grid()
    sem[0:3, 0:3, 0:2] = 4  # car voxels in the corner (-40 m, -40 m)
    sem[197:200, 197:200, 14:16] = 4  # and the opposite corner
    # car centres outside the grid: beyond -40 m (official truncation -> 0 / -1), beyond +40 m and below the grid
    xyz = np.array([[-40.3, -40.3, -1.2], [-41.0, -41.0, -1.0], [55.0, 50.0, 9.0]], np.float32)
    centers = DuckCenters(xyz, np.array([0.9, 0.8, 0.7], np.float32), np.zeros(3, np.float32))
    assert official_center_voxels(torch.from_numpy(xyz)).tolist() == [[0, 0, 0], [-2, -2, 0], [237, 225, 25]]
    off = assign_instances(sem, centers, "official", sort_indices=[0, 1, 2])
    corr = assign_instances(sem, centers, "corrected")
    for res in (off, corr):
        pano = res.panoptic.numpy()
        assert np.all(pano[0:3, 0:3, 0:2] == FIRST_INSTANCE_ID)
        assert np.all(pano[197:200, 197:200, 14:16] == FIRST_INSTANCE_ID + 2)
        assert res.instances.voxel_count.tolist() == [18, 0, 18]


@pytest.mark.parametrize("mode", ["official", "corrected"])
def test_ties_go_to_the_first_center_in_score_order(mode):
    sem = _grid()
    sem[137, 137, 2] = 4  # voxel centre (15, 15, 0) m, exact in float32
    # 0.8 m either side: equal float32 distances, and equal integer distances after the official truncation
    xyz = np.array([[14.2, 15.0, 0.0], [15.8, 15.0, 0.0]], np.float32)
    for order in ([0, 1], [1, 0]):
        centers = DuckCenters(xyz[order], np.array([0.9, 0.8], np.float32), np.zeros(2, np.float32))
        for strategy in ("pruned", "dense"):
            res = assign_instances(
                sem, centers, mode, strategy=strategy, sort_indices=[0, 1] if mode == "official" else None
            )
            assert int(res.panoptic[137, 137, 2]) == FIRST_INSTANCE_ID


@pytest.mark.parametrize("mode", ["official", "corrected"])
def test_score_threshold_boundary(mode):
    sem = _grid()
    sem[50:60, 50:60, 0:4] = 4
    at = np.float32(0.3)
    above = np.nextafter(at, np.float32(1.0))
    xyz = np.array([[-19.0, -19.0, 0.0], [-18.0, -18.0, 0.0], [-17.0, -17.0, 0.0]], np.float32)
    centers = DuckCenters(xyz, np.array([0.9, above, at], np.float32), np.zeros(3, np.float32))
    assert len(assign_instances(sem, centers, mode).instances) == 3  # None: the decoder already filtered
    kept = assign_instances(sem, centers, mode, score_threshold=0.3).instances.numpy()
    assert sorted(kept.score.tolist()) == sorted(
        [float(above), float(np.float32(0.9))]
    )  # strictly greater, float32 comparison
    assert len(assign_instances(sem, centers, mode, score_threshold=0.95).instances) == 0


@pytest.mark.parametrize("mode", ["official", "corrected"])
def test_500_centers_pruned_equals_dense_with_bounded_blocks(mode):
    rng = np.random.default_rng(1)
    sem = _grid()
    things = rng.random(OCC_GRID.shape) < 0.08
    sem[things] = rng.integers(1, 11, int(things.sum()))
    xyz = np.column_stack(
        [rng.uniform(-61.2, 61.2, 500), rng.uniform(-61.2, 61.2, 500), rng.uniform(-10, 10, 500)]
    ).astype(np.float32)
    xyz[:20] = np.round(xyz[:20] / 0.4) * 0.4  # some exactly on voxel boundaries
    label = np.where(np.arange(500) < 300, 0, rng.integers(0, 10, 500)).astype(np.float32)  # 300+ cars
    centers = DuckCenters(xyz, np.sort(rng.uniform(0.3, 1, 500))[::-1].astype(np.float32).copy(), label)
    ref = assign_instances(sem, centers, mode, strategy="dense", block_elements=1 << 20)
    claimed = things if mode == "corrected" else things & ~np.isin(sem, (1, 8))  # official: no barrier/cone ids
    assert ref.instances.voxel_count.sum() == int(claimed.sum())
    for block in (1 << 14, 1 << 22):  # many chunks / one chunk
        res = assign_instances(sem, centers, mode, strategy="pruned", block_elements=block)
        assert torch.equal(res.panoptic, ref.panoptic)
        assert torch.equal(res.instances.voxel_count, ref.instances.voxel_count)


@pytest.mark.parametrize("mode", ["official", "corrected"])
def test_fast_paths_agree(mode, unit, monkeypatch):
    """Word-level vs whole-grid voxel search, and the small-problem vs hierarchical pruning levels: same output."""
    import flashocc_ros.network.panoptic as panoptic

    pt = _load(GOLDEN["PT"])  # dense noisy labels
    cases = [(unit["occ_label"], _centers(unit)), (pt["occ_label"], _centers(pt, 120))]
    for sem, centers in cases:
        ref = assign_instances(sem, centers, mode, strategy="dense")
        for fraction, small_pairs in ((0.0, 0), (1.0, 1 << 40)):
            monkeypatch.setattr(panoptic, "SPARSE_WORD_FRACTION", fraction)
            monkeypatch.setattr(panoptic, "SMALL_PROBLEM_PAIRS", small_pairs)
            res = assign_instances(sem, centers, mode, strategy="pruned")
            assert torch.equal(res.panoptic, ref.panoptic)
            assert torch.equal(res.instances.voxel_count, ref.instances.voxel_count)


@pytest.mark.parametrize("mode", ["official", "corrected"])
def test_strategies_agree_on_golden(mode, golden):
    sem = torch.from_numpy(golden["occ_label"])
    a = assign_instances(sem, _centers(golden), mode, strategy="pruned")
    b = assign_instances(sem, _centers(golden, 60), mode, strategy="dense")
    c = assign_instances(sem, _centers(golden, 60), mode, strategy="pruned")
    assert torch.equal(b.panoptic, c.panoptic)
    assert a.panoptic.shape == (200, 200, 16)


# ------------------------------------------------------------------------------------------------------------------
# Inputs, outputs, errors
# ------------------------------------------------------------------------------------------------------------------


def test_center_input_forms_agree(unit):
    xyz, score, label = unit["centers_xyz"], unit["centers_score"], unit["centers_label"]
    ref = assign_instances(unit["occ_label"], DuckCenters(xyz, score, label)).panoptic
    for centers in (
        (xyz, score, label),
        {"xyz": xyz, "score": score, "label": label},
        unit,  # golden key names
        DuckCenters(torch.from_numpy(xyz), torch.from_numpy(score), torch.from_numpy(label).long()),
    ):
        assert torch.equal(assign_instances(unit["occ_label"], centers).panoptic, ref)
    for dtype in (np.uint8, np.int32, np.int64):
        got = assign_instances(unit["occ_label"].astype(dtype), (xyz, score, label)).panoptic
        assert torch.equal(got, ref)


def test_centers_from_the_decoder_are_accepted(unit):
    from flashocc_ros.network.centers import Centers

    ct = center_tensors(unit)
    obj = Centers(xyz=ct.xyz, score=ct.score, label=ct.label)
    ref = assign_instances(unit["occ_label"], unit).panoptic
    assert torch.equal(assign_instances(unit["occ_label"], obj).panoptic, ref)


def test_instance_arrays_for_messages(unit):
    arr = assign_instances(unit["occ_label"], unit).instances.numpy()
    assert arr.id.dtype == np.int32 and arr.occ_class.dtype == np.uint8
    assert arr.center_xyz.shape == (len(arr), 3) and arr.center_xyz.dtype == np.float32
    assert arr.score.dtype == np.float32 and arr.voxel_count.dtype == np.int64
    assert arr.id.max() < 2**16  # fits OccupancyInstance.id (uint16)
    row = arr.rows()[0]
    assert set(row) == {"id", "occ_class", "center_xyz", "score", "voxel_count"}


@pytest.mark.parametrize(
    ("semantic", "centers", "kwargs", "message"),
    [
        (np.zeros((200, 200, 15), np.uint8), None, {}, "semantic: expected shape"),
        (np.zeros((200, 200, 16), np.float32), None, {}, "integer label grid"),
        (np.full((200, 200, 16), 18, np.uint8), None, {}, "labels must be in 0..17"),
        (np.zeros((200, 200, 16), np.uint8), (np.zeros((1, 3)), [0.5], [10]), {}, "row 0 = 10"),
        (np.zeros((200, 200, 16), np.uint8), (np.zeros((1, 3)), [0.5], [2.5]), {}, "not a head class"),
        (np.zeros((200, 200, 16), np.uint8), ([[np.nan, 0, 0]], [0.5], [1]), {}, "not finite"),
        (np.zeros((200, 200, 16), np.uint8), ([[1e4, 0, 0]], [0.5], [1]), {}, "beyond"),
        (np.zeros((200, 200, 16), np.uint8), (np.zeros((2, 3)), [0.5], [1, 1]), {}, "centers: xyz has 2 rows"),
        (np.zeros((200, 200, 16), np.uint8), "nonsense", {}, "centers: expected an object"),
        (np.zeros((200, 200, 16), np.uint8), None, {"mode": "best"}, "mode: 'best'"),
        (np.zeros((200, 200, 16), np.uint8), None, {"strategy": "magic"}, "strategy: 'magic'"),
        (
            np.zeros((200, 200, 16), np.uint8),
            (np.zeros((2, 3)), [0.5, 0.4], [1, 0]),
            {"mode": "official", "sort_indices": [0, 1]},
            "does not sort",
        ),
        (
            np.zeros((200, 200, 16), np.uint8),
            (np.zeros((2, 3)), [0.5, 0.4], [1, 0]),
            {"mode": "official", "sort_indices": [0, 0]},
            "permutation",
        ),
    ],
)
def test_bad_input_raises_clear_error(semantic, centers, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        assign_instances(semantic, centers, **kwargs)


# ------------------------------------------------------------------------------------------------------------------
# CUDA
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("mode", ["official", "corrected"])
def test_cuda_matches_cpu(mode, golden, unit):
    for d in (golden, unit):
        cpu = assign_instances(torch.from_numpy(d["occ_label"]), _centers(d), mode)
        for strategy in ("dense", "pruned"):
            gpu = assign_instances(torch.from_numpy(d["occ_label"]).cuda(), _centers(d), mode, strategy=strategy)
            assert gpu.panoptic.is_cuda
            assert torch.equal(gpu.panoptic.cpu(), cpu.panoptic)
            assert torch.equal(gpu.instances.voxel_count.cpu(), cpu.instances.voxel_count)
            assert torch.equal(gpu.instances.id.cpu(), cpu.instances.id)
