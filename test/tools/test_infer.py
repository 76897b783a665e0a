"""flashocc-infer end to end against the official answers: golden IN.npz layout, raw camera images, checkpoints,
panoptic output, config defaults, input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashocc_ros.config import load_config
from flashocc_ros.network.weights import deterministic_state_dict
from flashocc_ros.tools import infer
from test.model_helpers import GOLDEN, golden, seed0_inputs
from test.reference.near_ties import check_centers, check_labels, check_panoptic
from test.reference.raw_images import raw_images

PYTORCH_LOGIT_REL_TOL = 1e-4


@pytest.fixture(scope="module")
def inputs_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("infer") / "in.npz"
    np.savez(path, **seed0_inputs())
    return path


def _check_occupancy(out: dict, official) -> None:
    logits = out["occ_logits"]
    tol = PYTORCH_LOGIT_REL_TOL * float(logits.std())
    ix, iy, iz = official["probe_vox_xyz"].T
    assert np.abs(logits[ix, iy, iz] - official["probe_logits"]).max() < tol
    check_labels(out["occ_label"], official["occ_label"], logits, int(official["occ_margin_lt_1e-3"]), tol)


def test_golden_inputs_with_mmcv_checkpoint_and_logits(tmp_path, inputs_npz):
    ckpt = tmp_path / "m0.pth"
    torch.save({"meta": {"epoch": 24}, "state_dict": deterministic_state_dict("flashocc-r50-M0", 0)}, ckpt)
    out = tmp_path / "out.npz"
    args = ["--checkpoint", str(ckpt), "--inputs", str(inputs_npz), "--backend", "pytorch", "--device", "cpu"]
    assert infer.main([*args, "--out", str(out), "--save-logits", "--threads", "2"]) == 0  # variant from the file
    with np.load(out) as z:
        assert set(z.files) == {"occ_label", "occ_logits"}
        res = {k: z[k] for k in z.files}
    assert res["occ_label"].shape == (200, 200, 16) and res["occ_label"].dtype == np.uint8
    assert res["occ_logits"].shape == (200, 200, 16, 18) and res["occ_logits"].dtype == np.float32
    _check_occupancy(res, golden("flashocc-r50-M0"))


def test_panoptic_variant_gives_the_official_centres_and_instances(tmp_path, inputs_npz):
    out = tmp_path / "pt.npz"
    argv = ["--variant", "PT", "--inputs", str(inputs_npz), "--out", str(out), "--pano-mode", "official"]
    assert infer.main([*argv, "--backend", "pytorch", "--device", "cpu", "--save-logits"]) == 0
    with np.load(out) as z:
        res = {k: z[k] for k in z.files}
    expected = {"occ_label", "occ_logits", "centers_xyz", "centers_score", "centers_label", "pano_inst"}
    assert set(res) == expected | {"cen_heatmap_logits", "cen_reg", "cen_height"}
    assert res["pano_inst"].dtype == np.int32 and res["pano_inst"].shape == (200, 200, 16)
    assert res["centers_label"].dtype == np.int64
    g = golden("panoptic-flashocc-r50-depth-tiny-pano")
    _check_occupancy(res, g)
    match = check_centers(res, g, res["cen_heatmap_logits"], res["cen_reg"])
    check_panoptic(res["pano_inst"], g["pano_inst"], res["occ_label"], g["occ_label"], res, g, match)


def test_raw_camera_images_give_the_official_answer(tmp_path):
    """The official raw-image run: 900x1600 RGB images, the golden rig, post_rots/post_trans left to the tool."""
    inp = {k: v for k, v in seed0_inputs().items() if k not in ("imgs", "post_rots", "post_trans")}
    path = tmp_path / "raw.npz"
    np.savez(path, raw_imgs=raw_images(0)[None], **inp)
    out = tmp_path / "raw_out.npz"
    argv = ["--variant", "M0", "--inputs", str(path), "--out", str(out), "--save-logits", "--backend", "pytorch"]
    assert infer.main([*argv, "--device", "cpu"]) == 0
    with np.load(out) as z, np.load(GOLDEN / "raw_e2e_flashocc-r50-M0_seed0.npz") as official:
        _check_occupancy({k: z[k] for k in z.files}, official)


def test_flags_default_to_the_config():
    args = infer.build_parser().parse_args(["--variant", "PT", "--inputs", "in.npz", "--out", "o.npz"])
    cfg = infer._config(args)
    defaults = load_config().model
    assert (cfg.model.pano_mode, cfg.model.backend, cfg.model.device) == (
        defaults.pano_mode,
        defaults.backend,
        defaults.device,
    )
    args = infer.build_parser().parse_args(
        ["--variant", "PT", "--inputs", "i", "--out", "o", "--pano-mode", "official", "--backend", "onnxruntime"]
    )
    cfg = infer._config(args)
    assert (cfg.model.pano_mode, cfg.model.backend) == ("official", "onnxruntime")


def test_bad_inputs_give_one_clear_error_and_no_output(tmp_path, inputs_npz, capsys):
    full = dict(np.load(inputs_npz))
    out = tmp_path / "o.npz"

    def run(arrays, *extra):
        path = tmp_path / "bad.npz"
        np.savez(path, **arrays)
        rc = infer.main(["--variant", "M0", "--inputs", str(path), "--out", str(out), "--device", "cpu", *extra])
        return rc, capsys.readouterr().err

    rc, err = run({k: v for k, v in full.items() if k != "intrins"})
    assert rc == 2 and "missing key 'intrins'" in err
    rc, err = run({**full, "bda": np.eye(4, dtype=np.float32)[None]})
    assert rc == 2 and "key 'bda': expected shape (1, 3, 3), got (1, 4, 4)" in err
    rc, err = run({**full, "bda": np.diag([-1.0, 1.0, 1.0]).astype(np.float32)[None]})
    assert rc == 2 and "key 'bda' disagrees with the identity" in err
    rc, err = run({k: v for k, v in full.items() if k != "imgs"})
    assert rc == 2 and "needs key 'imgs' or 'raw_imgs'" in err
    raw = np.zeros((1, 6, 900, 1600, 3), np.uint8)
    wrong = {**{k: v for k, v in full.items() if k != "imgs"}, "raw_imgs": raw}
    wrong["post_trans"] = np.zeros_like(full["post_trans"])
    rc, err = run(wrong)
    assert rc == 2 and "key 'post_trans' disagrees with the test-time augmentation of 1600x900" in err
    rc = infer.main(["--inputs", str(inputs_npz), "--out", str(out)])
    assert rc == 2 and "--variant is required" in capsys.readouterr().err
    ckpt = tmp_path / "pt_shapes.pth"
    torch.save({"x.weight": torch.zeros(1)}, ckpt)
    rc = infer.main(["--variant", "M0", "--checkpoint", str(ckpt), "--inputs", str(inputs_npz), "--out", str(out)])
    assert rc == 2 and "does not match variant 'flashocc-r50-M0'" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
