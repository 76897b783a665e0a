"""Parity of our FlashOcc / Panoptic-FlashOcc networks with the official implementation (seed-0 golden data).

Stages are checked in order (depth -> LSS BEV -> BEV encoder -> occupancy logits/labels -> centres) so a failure
names the stage that diverged. Tolerances follow golden/README.md.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from flashocc_ros.network.model import occupancy_labels
from flashocc_ros.network.weights import deterministic_images, deterministic_state_dict, variant_manifest
from test.model_helpers import VARIANT_NAMES, assert_layout_matches_manifest, golden, manifest, seed0_model, seed0_run
from test.reference.near_ties import check_centers, check_labels

REL_TOL = 1e-4  # x the tensor's std
INTERMEDIATE_REL_TOL = 2e-4


def _max_rel(ours: np.ndarray, ref: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    return float(np.abs(ours.astype(np.float64) - ref).max() / ref.std())


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_state_dict_layout_matches_official_manifest(variant):
    assert_layout_matches_manifest(variant_manifest(variant), manifest(variant))


def test_weight_recipe_reproduces_documented_checksums():
    sd = deterministic_state_dict("flashocc-r50-M0", 0)
    w = sd["img_backbone.conv1.weight"]
    assert float(w.double().sum()) == pytest.approx(5.059508511997258, abs=1e-12)
    assert hashlib.sha256(w.numpy().tobytes()).hexdigest()[:16] == "ce058bd73f827dd2"
    assert float(sd["occ_head.predicter.2.bias"].double().sum()) == pytest.approx(-0.5355349490564549, abs=1e-12)
    assert float(sd["img_bev_encoder_neck.conv.1.running_var"].double().sum()) == pytest.approx(
        256.61018854379654, abs=1e-10
    )
    assert sd["img_backbone.bn1.num_batches_tracked"].dtype == torch.int64


def test_input_recipe_reproduces_documented_checksums():
    imgs = deterministic_images(0)
    assert imgs.shape == (1, 6, 3, 256, 704) and imgs.dtype == np.float32
    assert hashlib.sha256(imgs.tobytes()).hexdigest()[:16] == "f86cd14b2b8cd8d6"
    assert float(imgs[0, 0, 0, 0, 0]) == 1.084084153175354
    assert hashlib.sha256(deterministic_images(1).tobytes()).hexdigest()[:16] == "65c19891d81a940d"


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_parity_with_official_outputs(variant):
    g = golden(variant)
    ours = seed0_run(variant)

    # stage 0: geometry
    np.testing.assert_allclose(ours["sensor2keyego"], g["sensor2keyegos"][0], atol=1e-6)
    assert (ours["num_points"], ours["num_cells"]) == (int(g["lss_n_points_kept"]), int(g["lss_n_intervals"]))
    if "mlp_input" in g:
        np.testing.assert_allclose(ours["mlp_input"], g["mlp_input"], rtol=1e-6, atol=1e-6)

    # stage 1: depth distribution (expected depth per pixel, metres)
    expected = (ours["depth_prob"].astype(np.float64) * g["depth_bins"][None, :, None, None]).sum(1)
    assert np.abs(expected - g["depth_expected"]).max() < 1e-3, "depth net diverged"

    # stage 2: LSS BEV feature (probe cells)
    iy, ix = g["probe_bev_yx"][:, 0], g["probe_bev_yx"][:, 1]
    rel = _max_rel(ours["lss_bev"][:, iy, ix].T, g["lss_bev_probe"])
    assert rel < INTERMEDIATE_REL_TOL, f"LSS BEV (view transform / BEV pooling) diverged: {rel:.2e} x std"

    # stage 3: BEV encoder output (probe cells)
    rel = _max_rel(ours["bev_encoder"][:, iy, ix].T, g["bev_encoder_probe"])
    assert rel < INTERMEDIATE_REL_TOL, f"BEV encoder diverged: {rel:.2e} x std"

    # stage 4: occupancy logits at the probe voxels and the label grid
    p = g["probe_vox_xyz"]
    probe = ours["occ_logits"][p[:, 0], p[:, 1], p[:, 2]]
    logits_std = float(ours["occ_logits"].std())
    err = float(np.abs(probe - g["probe_logits"]).max())
    err_bound = REL_TOL * logits_std
    assert err < err_bound, f"occ head logits differ by {err:.3g} (std {logits_std:.3g})"
    check_labels(ours["occ_label"], g["occ_label"], ours["occ_logits"], int(g["occ_margin_lt_1e-3"]), err_bound)

    # stage 5: instance centres (panoptic variants), decided exactly except at numeric ties
    if "centers_xyz" in g:
        check_centers(ours["centers"].numpy(), g, ours["heatmap"][0], ours["reg"][0])


def test_bn_folding_keeps_state_dict_and_matches_unfolded_graph():
    model, *_ = seed0_model("flashocc-r50-M0")
    block = model.img_bev_encoder_backbone.layers[0][0]
    keys_before = list(model.state_dict())
    x = torch.randn(1, 64, 40, 40, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            folded = block(x).clone()
            model.set_folding(False)
            plain = block(x).clone()
    finally:
        model.set_folding(True)
    assert list(model.state_dict()) == keys_before
    assert not any("_fw" in k or "_fb" in k for k in model.state_dict())
    torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-4)
    assert folded.abs().sum() > 0


def test_load_state_dict_refolds_and_train_mode_uses_batchnorm():
    model, *_ = seed0_model("flashocc-r50-M0")
    block = model.img_bev_encoder_backbone.layers[0][0]
    x = torch.randn(1, 64, 24, 24, generator=torch.Generator().manual_seed(1))
    x = x.contiguous(memory_format=torch.channels_last)
    prefix = "img_bev_encoder_backbone.layers.0.0"
    original = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}
    try:
        with torch.inference_mode():
            before = block(x).clone()
        sd = model.state_dict()
        sd["img_bev_encoder_backbone.layers.0.0.bn1.weight"] = sd["img_bev_encoder_backbone.layers.0.0.bn1.weight"] * 2
        model.load_state_dict(sd)
        with torch.inference_mode():
            after = block(x).clone()
            model.set_folding(False)
            plain = block(x).clone()
        assert not torch.allclose(before, after), "folded weights were not rebuilt after load_state_dict"
        torch.testing.assert_close(after, plain, rtol=1e-4, atol=1e-4)
        model.train()
        assert not any(getattr(m, "_folded_ready", False) for m in model.modules())
    finally:
        model.eval()
        model.load_state_dict({**model.state_dict(), **original})
    assert all(getattr(m, "_folded_ready", True) for m in model.modules())


def test_forward_tensors_shapes_and_label_rule():
    run = seed0_run("panoptic-flashocc-r50-depth-tiny-pano")
    assert run["occ_logits"].shape == (200, 200, 16, 18)
    logits = torch.zeros(1, 2, 2, 1, 18)
    logits[..., 3] = 1.0
    logits[..., 5] = 1.0  # tie: first maximum wins
    assert occupancy_labels(logits).flatten().tolist() == [3, 3, 3, 3]


def test_strict_loading_rejects_missing_and_unexpected_keys():
    model, *_ = seed0_model("flashocc-r50-M0")
    sd = model.state_dict()
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict({**sd, "aux_centerness_head.shared_conv.conv.weight": torch.zeros(64, 128, 3, 3)})
    missing = dict(sd)
    missing.pop("occ_head.predicter.2.bias")
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(missing)
    model.load_state_dict(sd)
