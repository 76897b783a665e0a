"""Geometry: key-ego poses, frustum, pooling indices (vs the official indices), BEV pooling implementations."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from flashocc_ros.network.geometry import (
    BEV_SIZE,
    PoolIndexCache,
    PoolIndices,
    RigCalibration,
    bev_pool,
    bev_pool_csr,
    compute_pool_indices,
    frustum_to_ego,
    make_frustum,
    make_mlp_input,
    prepare_geometry,
    reference_rig,
    sensor_to_key_ego,
)
from flashocc_ros.network.preprocess import augmentation_for
from test.model_helpers import GOLDEN, golden, seed0_inputs
from test.reference.official_geometry import compute_pool_indices_reference, frustum_to_ego_reference

DIGESTS = json.loads((GOLDEN / "pool_indices_digest.json").read_text())


def _geo():
    inp = seed0_inputs()
    s2ke = sensor_to_key_ego(inp["sensor2egos"], inp["ego2globals"])
    return s2ke, inp["intrins"], inp["post_rots"], inp["post_trans"], inp["bda"]


def test_sensor_to_key_ego_matches_official():
    s2ke, *_ = _geo()
    assert s2ke.dtype == np.float32 and s2ke.shape == (6, 4, 4)
    np.testing.assert_array_equal(s2ke, golden("flashocc-r50-M0")["sensor2keyegos"][0])
    # camera 0 is the key ego: its transform is its own sensor2ego
    np.testing.assert_allclose(s2ke[0], seed0_inputs()["sensor2egos"][0, 0], atol=1e-6)


def test_reference_rig_is_the_golden_rig():
    rig = reference_rig()
    inp = seed0_inputs()
    np.testing.assert_array_equal(rig.sensor2ego.astype(np.float32), inp["sensor2egos"][0])
    np.testing.assert_array_equal(rig.intrinsics.astype(np.float32), inp["intrins"][0])
    np.testing.assert_array_equal(rig.sensor2keyego(), golden("flashocc-r50-M0")["sensor2keyegos"][0])


def test_float64_calibration_gives_the_official_key_ego_transforms():
    """TF and the nuScenes tables give float64 poses; the official network sees them as float32 tensors. The key-ego
    transforms (and so every pooling index) must be those of the float32-rounded inputs, bit for bit."""
    exact = reference_rig(float32=False)
    assert exact.ego2global.dtype == np.float64
    assert not np.array_equal(exact.ego2global, exact.ego2global.astype(np.float32).astype(np.float64))
    golden_s2ke = golden("flashocc-r50-M0")["sensor2keyegos"][0]
    np.testing.assert_array_equal(exact.sensor2keyego(), golden_s2ke)
    np.testing.assert_array_equal(sensor_to_key_ego(exact.sensor2ego, exact.ego2global), golden_s2ke)


def test_frustum_spacing():
    fr = make_frustum("flashocc-r50")
    assert fr.shape == (88, 16, 44, 3)
    np.testing.assert_allclose(fr[0, 0, :, 0].numpy(), np.linspace(0, 703, 44), rtol=1e-6)
    np.testing.assert_allclose(fr[0, :, 0, 1].numpy(), np.arange(16) * 17.0)
    np.testing.assert_allclose(fr[:, 0, 0, 2].numpy(), np.arange(1.0, 45.0, 0.5))
    assert make_frustum("flashocc-r50-M0").shape[0] == 44


@pytest.mark.parametrize("variant", ["flashocc-r50-M0", "flashocc-r50"])
def test_frustum_points_match_official(variant):
    with np.load(GOLDEN / "geometry_golden.npz") as z:
        ref = z[f"{variant}__frustum_ego_coor_sample"]
    pts = frustum_to_ego(variant, *_geo()).numpy()
    np.testing.assert_allclose(pts[:, ::4, ::4, ::4], ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["flashocc-r50-M0", "flashocc-r50"])
def test_pool_indices_equal_official_as_sets(variant):
    pool = compute_pool_indices(variant, *_geo())
    g = golden(variant)
    assert pool.num_points == int(g["lss_n_points_kept"]) and pool.num_cells == int(g["lss_n_intervals"])
    rb, rd, rf = (t.numpy().astype(np.int64) for t in pool.as_tuple()[:3])
    order = np.lexsort((rd, rb))
    triples = np.stack([rb[order], rd[order], rf[order]], 1).astype(np.int32)
    assert hashlib.sha256(triples.tobytes()).hexdigest() == DIGESTS[variant]["pool_triples_sha256"]
    lengths = pool.interval_lengths.numpy().astype(np.int32)
    assert hashlib.sha256(lengths.tobytes()).hexdigest() == DIGESTS[variant]["interval_lengths_sha256"]
    # sorted by cell, runs delimited by interval starts/lengths
    assert np.all(np.diff(rb) >= 0)
    starts = pool.interval_starts.numpy()
    assert starts[0] == 0 and np.array_equal(starts[1:], np.cumsum(lengths)[:-1])
    assert all(t.dtype == torch.int32 for t in pool.as_tuple())


def test_mlp_input_matches_official():
    mlp = make_mlp_input(*_geo())
    assert mlp.shape == (1, 6, 27)
    np.testing.assert_array_equal(mlp.numpy(), golden("panoptic-flashocc-r50-depth-tiny-pano")["mlp_input"])


def _random_pool(num_cams=6, d=5, h=3, w=4, num_points=400, seed=0):
    rng = np.random.default_rng(seed)
    rd = rng.integers(0, num_cams * d * h * w, num_points)
    cam, rem = rd // (d * h * w), rd % (h * w)
    rf = cam * h * w + rem
    rb = rng.integers(0, 50, num_points) * 997 % (BEV_SIZE[0] * BEV_SIZE[1])
    order = np.argsort(rb, kind="stable")
    rb, rd, rf = rb[order], rd[order], rf[order]
    starts = np.flatnonzero(np.r_[True, rb[1:] != rb[:-1]])
    lengths = np.diff(np.r_[starts, num_points])
    t = lambda a: torch.from_numpy(a.astype(np.int32))  # noqa: E731
    return PoolIndices(t(rb), t(rd), t(rf), t(starts), t(lengths)), (num_cams, d, h, w)


def test_bev_pool_implementations_agree_with_a_direct_sum():
    pool, (n, d, h, w) = _random_pool()
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(n, d, h, w, generator=gen).softmax(1)
    context = torch.randn(n, 7, h, w, generator=gen)
    expected = np.zeros((BEV_SIZE[1] * BEV_SIZE[0], 7))
    feat_rows = context.permute(0, 2, 3, 1).reshape(-1, 7).double().numpy()
    for b, dd, f in zip(*(t.numpy() for t in pool.as_tuple()[:3])):
        expected[b] += depth.reshape(-1)[dd].item() * feat_rows[f]
    expected = expected.reshape(200, 200, 7).transpose(2, 0, 1)[None]
    for fn in (bev_pool, bev_pool_csr):
        out = fn(depth, context, pool)
        assert out.shape == (1, 7, 200, 200)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    # tuple form (ranks_bev, ranks_depth, ranks_feat) works too; empty cells are exactly zero
    out = bev_pool(depth, context, pool.as_tuple())
    empty = np.ones(200 * 200, bool)
    empty[pool.ranks_bev.numpy()] = False
    assert np.all(out.numpy().reshape(7, -1)[:, empty] == 0)


def test_bev_pool_exports_to_onnx_with_standard_ops(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pool, (n, d, h, w) = _random_pool(seed=1)

    class Pool(torch.nn.Module):
        def forward(self, depth, context, ranks_bev, ranks_depth, ranks_feat):
            return bev_pool(depth, context, (ranks_bev, ranks_depth, ranks_feat))

    gen = torch.Generator().manual_seed(1)
    args = (torch.rand(n, d, h, w, generator=gen), torch.randn(n, 5, h, w, generator=gen), *pool.as_tuple()[:3])
    path = tmp_path / "pool.onnx"
    names = ["depth", "context", "ranks_bev", "ranks_depth", "ranks_feat"]
    torch.onnx.export(Pool(), args, str(path), input_names=names, opset_version=17, dynamo=False)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "ScatterElements" in ops and not any(op.startswith("bev_pool") for op in ops)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {k: a.numpy() for k, a in zip(names, args)})
    np.testing.assert_allclose(out, Pool()(*args).numpy(), rtol=1e-5, atol=1e-6)


def test_rig_calibration_validation_and_cache():
    rig = reference_rig()
    with pytest.raises(ValueError, match="intrinsics: expected shape"):
        RigCalibration(intrinsics=np.eye(3), sensor2ego=rig.sensor2ego)
    bad = rig.sensor2ego.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="sensor2ego: contains non-finite"):
        RigCalibration(intrinsics=rig.intrinsics, sensor2ego=bad)
    cache = PoolIndexCache()
    a = cache.get("flashocc-r50-M0", rig)
    b = cache.get("M0", reference_rig())
    assert a is b and cache.misses == 1
    assert a.mlp_input is None and a.pool.num_points == int(golden("flashocc-r50-M0")["lss_n_points_kept"])
    moved = RigCalibration(rig.intrinsics, rig.sensor2ego + np.eye(4)[None] * 0, rig.ego2global)
    moved.sensor2ego[:, 0, 3] += 0.5
    assert cache.get("M0", moved) is not a and cache.misses == 2
    geo = prepare_geometry("PT", rig)
    np.testing.assert_array_equal(geo.mlp_input.numpy(), golden("panoptic-flashocc-r50-depth-tiny-pano")["mlp_input"])


# -- fast geometry == the official operation order, bit for bit ------------------------------------------------


def _rotation(axis_angle) -> np.ndarray:
    """Rodrigues' formula (float64)."""
    theta = float(np.linalg.norm(axis_angle))
    if theta == 0:
        return np.eye(3)
    k = np.asarray(axis_angle) / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def _perturbed_rig(seed: int):
    """A random variation of the nuScenes rig (extrinsics, intrinsics, per-camera ego poses of a moving vehicle),
    then shifted so that one in-grid frustum point per camera lies on a voxel border in x and y (float32)."""
    rng = np.random.default_rng(seed)
    rig = reference_rig()
    s2e = rig.sensor2ego.copy()
    for c in range(6):
        s2e[c, :3, :3] = _rotation(rng.normal(0, 0.03, 3)) @ s2e[c, :3, :3]
        s2e[c, :3, 3] += rng.normal(0, 0.3, 3)
    k = rig.intrinsics.copy()
    k[:, :2, :2] *= rng.uniform(0.95, 1.05, (6, 1, 1))
    k[:, :2, 2] += rng.normal(0, 15, (6, 2))
    e2g = rig.ego2global.copy()
    for c in range(6):  # vehicle at up to ~15 m/s, cameras 0-50 ms apart
        e2g[c, :3, :3] = _rotation([0, 0, rng.normal(0, 0.005)]) @ e2g[c, :3, :3]
        e2g[c, :3, 3] += rng.uniform(-0.75, 0.75, 3) * [1, 1, 0.05]
    s2ke = sensor_to_key_ego(s2e, e2g)
    aug = augmentation_for((900, 1600))
    post_rot = np.repeat(aug.post_rot[None], 6, 0)
    post_tran = np.repeat(aug.post_tran[None], 6, 0)
    bda = None
    if seed % 5 == 1:  # another augmentation per camera (ray cache per camera, not shared)
        post_rot[3, :2, :2] *= np.float32(1.13)
        post_tran[3, :2] -= np.float32([7.0, 21.0])
    if seed % 5 == 2:  # a BEV augmentation: rotation + flip
        bda = (_rotation([0, 0, rng.uniform(-0.4, 0.4)]) @ np.diag([1.0, -1.0, 1.0])).astype(np.float32)
    pts = frustum_to_ego_reference("M0", s2ke, k, post_rot, post_tran, bda).numpy().reshape(6, -1, 3)
    g = (pts - np.float32([-40, -40, -1])) / np.float32([0.4, 0.4, 6.4])
    for c in range(6):  # snap one in-grid point per camera onto a voxel border (x and y)
        inside = np.flatnonzero(np.all((g[c, :, :2] > 2) & (g[c, :, :2] < 198), 1))
        if inside.size:
            p = pts[c, inside[rng.integers(inside.size)], :2].astype(np.float64)
            border = -40 + 0.4 * np.round((p + 40) / 0.4)
            delta = border - p
            if bda is not None:  # the shift applies before bda: move by inv(bda)'s xy block
                delta = np.linalg.solve(bda[:2, :2].astype(np.float64), delta)
            s2ke[c, :2, 3] += delta.astype(np.float32)
    return s2ke, k.astype(np.float32), post_rot, post_tran, bda


def _near_border_count(pts: np.ndarray) -> int:
    g = (pts[..., :2].astype(np.float64) + 40) / 0.4
    return int((np.abs(g - np.round(g)) < 1e-4).sum())


def test_inverse_per_matrix_equals_batched():
    from flashocc_ros.network.geometry import _inverse

    gen = torch.Generator().manual_seed(3)
    m = torch.randn(64, 3, 3, generator=gen) * torch.rand(64, 1, 1, generator=gen) * 1e3
    assert torch.equal(_inverse(m), torch.inverse(m))
    k = torch.from_numpy(reference_rig().intrinsics.astype(np.float32))
    assert torch.equal(_inverse(k), torch.inverse(k))


def test_fast_geometry_is_bit_identical_to_the_official_arithmetic_on_random_rigs():
    near_border = 0
    for seed in range(20):
        args = _perturbed_rig(seed)
        variant = "flashocc-r50" if seed % 10 == 9 else "flashocc-r50-M0"
        if seed % 4 == 0:  # the float32 coordinates themselves (indices below follow from them)
            fast = frustum_to_ego(variant, *args).numpy()
            ref = frustum_to_ego_reference(variant, *args).numpy()
            assert np.array_equal(fast, ref), f"rig {seed}: {(fast != ref).sum()} coordinates differ"
            near_border += _near_border_count(ref)
        new = compute_pool_indices(variant, *args)
        old = compute_pool_indices_reference(variant, *args)
        for name, a, b in zip(
            ("ranks_bev", "ranks_depth", "ranks_feat", "starts", "lengths"), new.as_tuple(), old.as_tuple()
        ):
            assert a.dtype == b.dtype == torch.int32, name
            assert torch.equal(a, b), f"rig {seed} ({variant}): {name} differs"
    assert near_border > 100  # the comparison includes many points within 1e-4 voxel of a border


def test_fast_geometry_uses_the_cached_rays_of_each_augmentation():
    args = _perturbed_rig(1)  # camera 3 has its own augmentation
    a = compute_pool_indices("M0", *args)
    b = compute_pool_indices("M0", *args)  # second call: cached rays
    assert all(torch.equal(x, y) for x, y in zip(a.as_tuple(), b.as_tuple()))
    far = list(args)
    far[0] = far[0].copy()
    far[0][:, 2, 3] += 100.0  # every camera 100 m up: nothing in the 6.4 m slab
    with pytest.raises(ValueError, match="no frustum point inside the BEV grid"):
        compute_pool_indices("M0", *far)


def _moving_frames(num_frames: int):
    """Key-ego transforms of the reference rig on a vehicle driving at 15 m/s with a yaw drift: every camera has
    its own ego pose (stamps 0-40 ms apart), every frame differs; camera 0 is the key ego, so its transform stays."""
    rig = reference_rig()
    for k in range(num_frames):
        e2g = rig.ego2global.copy()
        for c, offset_s in enumerate((0.03, 0.0, 0.01, 0.04, 0.025, 0.015)):
            t = k / 12 + offset_s
            yaw = 0.3 + 0.05 * t
            e2g[c, :3, :3] = _rotation([0, 0, yaw])
            e2g[c, :3, 3] = [600.0 + 15.0 * t * np.cos(yaw), 1600.0 + 15.0 * t * np.sin(yaw), 0.0]
        yield sensor_to_key_ego(rig.sensor2ego, e2g), rig.intrinsics


def test_moving_vehicle_recomputes_only_the_changed_cameras_bit_identically(monkeypatch):
    import flashocc_ros.network.geometry as geometry

    aug = augmentation_for((900, 1600))
    post_rot, post_tran = np.repeat(aug.post_rot[None], 6, 0), np.repeat(aug.post_tran[None], 6, 0)
    computed = []
    ego_points = geometry._ego_points
    monkeypatch.setattr(geometry, "_ego_points", lambda v, cam: computed.append(cam) or ego_points(v, cam))
    geometry._RANK_CACHE.clear()
    previous = None
    for k, (s2ke, intrinsics) in enumerate(_moving_frames(3)):
        computed.clear()
        new = compute_pool_indices("M0", s2ke, intrinsics, post_rot, post_tran)
        old = compute_pool_indices_reference("M0", s2ke, intrinsics, post_rot, post_tran)
        assert all(torch.equal(a, b) for a, b in zip(new.as_tuple(), old.as_tuple())), f"frame {k}"
        if previous is not None:
            unchanged = [c for c in range(6) if np.array_equal(s2ke[c], previous[c])]
            assert unchanged == [0]  # the key camera
            assert len(computed) == 5, f"frame {k}: {len(computed)} cameras computed"
        previous = s2ke
    # the same rig again: nothing recomputed; an identity bda given explicitly is the no-bda result
    computed.clear()
    again = compute_pool_indices("M0", s2ke, intrinsics, post_rot, post_tran, bda=np.eye(3))
    assert computed == [] and all(torch.equal(a, b) for a, b in zip(again.as_tuple(), new.as_tuple()))
    ref = compute_pool_indices_reference("M0", s2ke, intrinsics, post_rot, post_tran, bda=np.eye(3))
    assert all(torch.equal(a, b) for a, b in zip(again.as_tuple(), ref.as_tuple()))
    # another variant with the same cameras is its own cache entry
    m1 = compute_pool_indices("M1", s2ke, intrinsics, post_rot, post_tran)
    ref = compute_pool_indices_reference("M1", s2ke, intrinsics, post_rot, post_tran)
    assert len(computed) == 6 and all(torch.equal(a, b) for a, b in zip(m1.as_tuple(), ref.as_tuple()))


def test_cached_inverse_is_the_inverse_of_each_matrix():
    from flashocc_ros.network.geometry import _inverse

    gen = torch.Generator().manual_seed(4)
    m = torch.randn(8, 3, 3, generator=gen)
    first = _inverse(m)
    m2 = m.clone()
    m2[3] *= 2  # one matrix changes: its inverse changes, the others come from the cache
    second = _inverse(m2)
    assert torch.equal(first, torch.inverse(m)) and torch.equal(second, torch.inverse(m2))
    assert not torch.equal(second[3], first[3]) and torch.equal(second[4], first[4])


def test_history_frame_far_away_lifts_to_zeros_current_frame_is_an_error():
    """A history frame of a temporal model whose cameras are > 85 m from the current ego puts no frustum point in
    the grid: official voxel pooling returns an all-zero BEV for it (with a warning); for the current frame the
    same is a broken calibration and raises."""
    import warnings

    from flashocc_ros.network.geometry import bev_pool, bev_pool_csr
    from flashocc_ros.network.model4d import frame_geometry

    rig = reference_rig()
    aug = augmentation_for((900, 1600))
    post_rot, post_tran = np.stack([aug.post_rot] * 6), np.stack([aug.post_tran] * 6)
    key = rig.ego2global[0]
    far = rig.ego2global.copy()
    far[:, 0, 3] -= 200.0  # the vehicle was 200 m behind
    args = ("P2", rig.sensor2ego, far, key, rig.intrinsics, post_rot, post_tran, np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="no frustum point inside the BEV grid"):
        frame_geometry(*args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, pool = frame_geometry(*args, history=True)
    assert pool.num_points == 0
    assert any("history frame has no frustum point" in str(w.message) for w in caught)
    depth = torch.rand(6, 88, 16, 44)
    context = torch.rand(6, 80, 16, 44)
    for fn in (bev_pool, bev_pool_csr):
        out = fn(depth, context, pool)
        assert out.shape == (1, 80, 200, 200) and not out.any()
    _, near = frame_geometry(*args[:2], rig.ego2global, *args[3:], history=True)
    assert near.num_points > 0
