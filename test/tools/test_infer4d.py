"""flashocc-infer with a temporal variant: the multi-frame IN.npz layout of make_inputs_4d (6F cameras) gives the
official answer under the single-frame output keys; wrong frame counts are refused with one clear error."""

from __future__ import annotations

import re

import numpy as np
import pytest

import flashocc_ros.network.loading
from flashocc_ros.tools import infer
from test.model4d_helpers import P2, all_at_once, golden4d, seed0_inputs_4d, seed0_model_4d
from test.reference.near_ties import check_centers, check_labels, check_panoptic


def test_multi_frame_inputs_give_the_official_answer(tmp_path, monkeypatch):
    path = tmp_path / "in.npz"
    np.savez(path, **{k: v for k, v in seed0_inputs_4d(2).items() if k != "frame_times"})
    # serve the session's seed-0 model instead of building another (same weights; saves a model build)
    monkeypatch.setattr(flashocc_ros.network.loading, "load_model", lambda variant, *a, **k: seed0_model_4d(variant))
    out = tmp_path / "out.npz"
    argv = ["--variant", "P2", "--inputs", str(path), "--out", str(out), "--device", "cpu", "--save-logits"]
    assert infer.main([*argv, "--pano-mode", "official"]) == 0
    with np.load(out) as z:
        res = {k: z[k] for k in z.files}
    assert {"occ_label", "occ_logits", "centers_xyz", "centers_score", "centers_label", "pano_inst"} <= set(res)
    assert {"cen_heatmap_logits", "cen_reg", "cen_height"} <= set(res)
    np.testing.assert_array_equal(res["occ_label"], all_at_once(P2)["semantic"])
    g = golden4d(P2)
    tol = 1e-4 * float(res["occ_logits"].std())
    p = g["probe_vox_xyz"].astype(np.int64)
    assert np.abs(res["occ_logits"][p[:, 0], p[:, 1], p[:, 2]] - g["probe_logits"]).max() < tol
    check_labels(res["occ_label"], g["occ_label"], res["occ_logits"], int(g["occ_margin_lt_1e-3"]), tol)
    match = check_centers(res, g, res["cen_heatmap_logits"], res["cen_reg"])
    check_panoptic(res["pano_inst"], g["pano_inst"].astype(np.int32), res["occ_label"], g["occ_label"], res, g, match)


@pytest.mark.parametrize(
    "variant, frames, message",
    [
        ("P9", 2, r"key 'imgs': expected shape \(1, 54, 3, 256, 704\) \(6 cameras x 9 frames\), got \(1, 12,"),
        ("M2", 2, r"key 'imgs': expected shape \(1, 18, 3, 256, 704\) \(6 cameras x 3 frames\)"),
    ],
)
def test_wrong_frame_count_is_one_clear_error_and_no_output(tmp_path, capsys, variant, frames, message):
    path = tmp_path / "in.npz"
    np.savez(path, **{k: v for k, v in seed0_inputs_4d(frames).items() if k != "frame_times"})
    out = tmp_path / "out.npz"
    assert infer.main(["--variant", variant, "--inputs", str(path), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert re.search(message, err), err
    assert not out.exists()
