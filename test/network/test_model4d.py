"""Parity of the temporal Panoptic-FlashOcc networks (depth4d-pano, 2 frames; longterm8f-pano, 9 frames) with the
official implementation (seed-0 golden4d data), all frames at once and streamed frame by frame.

Stages are checked in order (geometry -> image neck -> depth net -> per-frame LSS BEV -> fused BEV -> BEV encoder ->
logits / labels -> centres -> panoptic) so a failure names the stage that diverged. Tolerances: golden4d README
(1e-4 x std for logits; intermediates 2e-4 x std; labels, centres and panoptic by the near-tie rules). P9's
per-frame probes are stored as float16 by the official harness: those are compared within float16 rounding.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from flashocc_ros.config import get_variant
from flashocc_ros.network.checkpoint import CheckpointError, check_state_dict, detect_variant
from flashocc_ros.network.weights import variant_manifest
from test.model4d_helpers import (
    M2,
    P2,
    P9,
    TEMPORAL_VARIANTS,
    all_at_once,
    golden4d,
    manifest4d,
    seed0_inputs_4d,
    streamed,
)
from test.model_helpers import assert_layout_matches_manifest
from test.reference.near_ties import check_centers, check_labels, check_panoptic

REL_TOL = 1e-4
INTERMEDIATE_REL_TOL = 2e-4
F16_REL = 2.0**-10  # float16 rounding of the stored official value


def _close(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    """|ours - ref| within 2e-4 x std(ref), plus the float16 rounding of ref when it was stored as float16."""
    ref64 = ref.astype(np.float64)
    bound = INTERMEDIATE_REL_TOL * ref64.std()
    if ref.dtype == np.float16:
        bound = bound + F16_REL * np.abs(ref64)
    err = np.abs(ours.astype(np.float64) - ref64)
    worst = float((err / (INTERMEDIATE_REL_TOL * ref64.std())).max())
    assert np.all(err <= bound), f"{what} diverged: worst {worst:.2f} x the allowed 2e-4 x std"


def check_against_official(ours: dict, g: dict) -> None:
    n = int(g["num_frames_bev"])
    # stage 0: geometry of every frame (lifted into the current key ego) and the shared camera-aware input
    np.testing.assert_allclose(ours["sensor2keyego"], g["sensor2keyegos"][:n], atol=1e-6)
    assert ours["num_points"] == g["lss_n_points_kept_frames"].tolist()
    r8, c8 = g["probe_px8_yx"].T
    r, c = g["probe_px_yx"].T
    # stage 0b (4D-stereo): layer1 stereo features, softmax cost volumes (stride 4), cost_volumn_net outputs
    if "stereo_feat" in ours and ours["stereo_feat"][2] is not None:  # all at once: every frame's
        rs, cs = g["probe_cvpx_yx"].T
        for k in range(3):
            _close(ours["stereo_feat"][k][:, :, rs, cs], g["stereo_feat_probe_frames"][k], f"stereo feature {k}")
        for k in range(2):
            _close(ours["cost_volume"][k][:, :, rs, cs], g["cost_volume_probe_frames"][k], f"cost volume {k}")
    if "cv_features" in ours:
        for k in range(2):
            _close(ours["cv_features"][k][:, :, r, c], g["cost_volume_net_out_probe_frames"][k], f"cost net {k}")
    # stage 1: image neck, depth net (probe pixels) and expected depth, per frame
    for k in range(n):
        _close(ours["img_neck"][k][:, :, r8, c8], g["img_neck_out_probe_frames"][k], f"image neck of frame {k}")
        _close(ours["depth_net_out"][k][:, :, r, c], g["depth_net_out_probe_frames"][k], f"depth net of frame {k}")
        expected = (ours["depth_prob"][k].astype(np.float64) * g["depth_bins"][None, :, None, None]).sum(1)
        assert np.abs(expected - g["depth_expected_frames"][k]).max() < 1e-3, f"depth of frame {k} diverged"
    # stage 2: per-frame LSS BEV and the fused temporal BEV (cur, prev1, ... order) at the probe cells
    iy, ix = g["probe_bev_yx"][:, 0], g["probe_bev_yx"][:, 1]
    for k in range(n):
        _close(ours["lss_bev"][k][:, iy, ix].T, g["lss_bev_probe_frames"][k], f"LSS BEV of frame {k}")
    # BEVDepth4D fuses [cur, prev1, ...]; BEVStereo4D runs the frames oldest first: [prev1, cur]
    assert g["bev_fused_block_fid"].tolist() == (list(range(n))[::-1] if "cv_features" in ours else list(range(n)))
    _close(ours["bev_fused"][:, iy, ix].T, g["bev_fused_probe"], "fused BEV")
    # stage 3: BEV encoder
    _close(ours["bev_encoder"][:, iy, ix].T, g["bev_encoder_probe"], "BEV encoder")
    # stage 4: logits at the probe voxels, labels by the near-tie rule
    logits = ours["logits"]
    p = g["probe_vox_xyz"].astype(np.int64)
    err = float(np.abs(logits[p[:, 0], p[:, 1], p[:, 2]] - g["probe_logits"]).max())
    bound = REL_TOL * float(logits.std())
    assert err < bound, f"occ head logits differ by {err:.3g} (allowed {bound:.3g})"
    check_labels(ours["semantic"], g["occ_label"], logits, int(g["occ_margin_lt_1e-3"]), bound)
    if "centers_xyz" not in g:
        return
    # stage 5: centres and the panoptic partition
    _close(ours["heatmap"][:, iy, ix], g["cen_heatmap_probe"], "centre heat map")
    match = check_centers(ours, g, ours["heatmap"], ours["reg"])
    check_panoptic(ours["panoptic"], g["pano_inst"].astype(np.int32), ours["semantic"], g["occ_label"], ours, g,
                   match)  # fmt: skip


# -- layout / loading (cheap) ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", TEMPORAL_VARIANTS)
def test_state_dict_layout_matches_official_manifest(variant):
    assert_layout_matches_manifest(variant_manifest(variant), manifest4d(variant))


def _meta_state_dict(variant: str) -> dict:
    return {k: torch.empty(shape, device="meta") for k, shape in manifest4d(variant).items()}


def test_checkpoints_are_told_apart_and_checked_strictly():
    assert detect_variant(_meta_state_dict(P2)) == P2
    assert detect_variant(_meta_state_dict(P9)) == P9  # same keys as P2, wider BEV-encoder input (720)
    assert detect_variant(_meta_state_dict(M2)) == M2
    with pytest.raises(CheckpointError, match=r"shape mismatches: img_bev_encoder_backbone\.layers\.0\.0\.conv1"):
        check_state_dict(_meta_state_dict(P9), P2)
    sd = _meta_state_dict(P2)
    sd.pop("pre_process_net.layers.0.0.downsample.bias")
    with pytest.raises(CheckpointError, match="missing keys: pre_process_net"):
        check_state_dict(sd, P2)
    assert get_variant("P2").num_frames == 2 and get_variant("P9").num_frames == 9
    assert get_variant("P9").temporal and not get_variant("PF").temporal


def test_multi_frame_input_recipe_reproduces_official_checksum():
    g = golden4d(P2)
    imgs = seed0_inputs_4d(2)["imgs"]
    assert imgs.shape == (1, 12, 3, 256, 704)
    assert hashlib.sha256(np.ascontiguousarray(imgs).tobytes()).hexdigest()[:16] == str(g["input_imgs_sha256_16"])


# -- parity (model runs cached per session) ---------------------------------------------------------------------
def test_depth4d_all_frames_at_once_matches_official():
    ours = all_at_once(P2)
    check_against_official(ours, golden4d(P2))
    assert ours["encoder_passes"] == 2


def test_depth4d_streamed_frame_by_frame_equals_all_at_once():
    """Frame 1 (t = -0.5 s) then frame 0 (t = 0) through run(): frame 1 has no history (first-frame rule: the
    current frame fills the slot), frame 0 finds frame 1 by time; each frame encoded once."""
    ours = streamed(P2, observe_history=False)
    assert ours["earlier_history_depths"] == [0] and ours["history_depth"] == 1
    assert ours["encoder_passes"] == 2
    ref = all_at_once(P2)
    for key in ("bev_fused", "bev_encoder", "logits", "semantic", "panoptic"):
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=f"streamed {key} differs from all-at-once")
    check_against_official(ours, golden4d(P2))


def test_longterm8f_streamed_matches_official():
    """Eight previous keyframes join the history one by one (observe), the ninth frame is fused with them."""
    ours = streamed(P9, observe_history=True)
    assert ours["history_depth"] == 8 and ours["encoder_passes"] == 9
    check_against_official(ours, golden4d(P9))


@pytest.mark.slow
def test_4d_stereo_all_frames_at_once_matches_official():
    """Frames 1 and 0 fully encoded, frame 2 (stem + layer1 only) as the stereo reference; ~1 min on 2 cores."""
    ours = all_at_once(M2)
    assert ours["encoder_passes"] == 3
    check_against_official(ours, golden4d(M2))


@pytest.mark.slow
def test_4d_stereo_streamed_reuses_the_previous_cost_volume_and_matches_official():
    """Frame 2 observed, frame 1 run (its previous keyframe: frame 2; the one before is missing -> itself, the
    official scene-start rule), frame 0 run: frame 1's cost volume against frame 2 is reused, not recomputed."""
    ours = streamed(M2, observe_history=False, observe_first=True)
    assert ours["earlier_history_depths"] == [1]
    assert ours["encoder_passes"] == 3
    assert ours["cost_volume_passes"] == 3, "frame 0 should compute only its own cost volume (frame 1's is kept)"
    check_against_official(ours, golden4d(M2))


def _official_cost_volume(curr, prev, grid):
    """The official DepthNet.calculate_cost_volumn arithmetic after gen_grid (SPEC4D 5), restated."""
    n, c, h, w = curr.shape
    d = grid.shape[1] // h
    cost = 0
    for g in range(c // 4):
        warped = torch.nn.functional.grid_sample(prev[:, 4 * g : 4 * g + 4], grid, align_corners=True,
                                                 padding_mode="zeros")  # fmt: skip
        cost = cost + (curr[:, 4 * g : 4 * g + 4].unsqueeze(2) - warped.view(n, -1, d, h, w)).abs().sum(dim=1)
    invalid = warped[:, 0].view(n, d, h, w) == 0
    cost[invalid] = cost[invalid] + 5.0
    return (-cost).softmax(dim=1)


def test_cost_volume_is_bit_identical_to_the_official_formula():
    from flashocc_ros.network.model4d import stereo_cost_volume

    gen = torch.Generator().manual_seed(0)
    curr, prev = torch.randn(2, 6, 16, 8, 22, generator=gen)
    grid = torch.rand(6, 88 * 8, 22, 2, generator=gen) * 2.4 - 1.2  # some samples fall outside -> invalid bias
    ours = stereo_cost_volume(curr, prev, grid)
    assert torch.equal(ours, _official_cost_volume(curr, prev, grid))
    assert (grid.abs() > 1).any(-1).any()
