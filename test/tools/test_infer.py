"""flashocc-infer end to end: golden IN.npz layout, raw images, checkpoints, panoptic output, input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashocc_ros.preprocess import preprocess_images
from flashocc_ros.tools import infer
from flashocc_ros.weights import deterministic_state_dict
from test.model_helpers import golden, seed0_inputs, seed0_model


@pytest.fixture
def cached_models(monkeypatch):
    """Serve seed-0 models from the session cache (shared with test_model) instead of rebuilding them; the
    checkpoint path is exercised for real in test_golden_inputs_with_mmcv_checkpoint_and_logits."""
    from flashocc_ros import model as model_module
    from flashocc_ros.config import get_variant

    def load_model(variant=None, checkpoint=None, device="cpu", seed=0):
        assert checkpoint is None and seed == 0 and device == "cpu"
        return seed0_model(get_variant(variant).name)[0]

    monkeypatch.setattr(model_module, "load_model", load_model)


@pytest.fixture(scope="module")
def inputs_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("infer") / "in.npz"
    np.savez(path, **seed0_inputs())
    return path


def test_golden_inputs_with_mmcv_checkpoint_and_logits(tmp_path, inputs_npz):
    ckpt = tmp_path / "m0.pth"
    torch.save({"meta": {"epoch": 24}, "state_dict": deterministic_state_dict("flashocc-r50-M0", 0)}, ckpt)
    out = tmp_path / "out.npz"
    args = ["--variant", "flashocc-r50-M0", "--checkpoint", str(ckpt), "--inputs", str(inputs_npz)]
    assert infer.main([*args, "--out", str(out), "--save-logits", "--threads", "2"]) == 0
    g = golden("flashocc-r50-M0")
    with np.load(out) as z:
        assert set(z.files) == {"occ_label", "occ_logits"}
        label, logits = z["occ_label"], z["occ_logits"]
    assert label.shape == (200, 200, 16) and label.dtype == np.uint8
    assert logits.shape == (200, 200, 16, 18) and logits.dtype == np.float32
    assert int((label != g["occ_label"]).sum()) <= int(g["occ_margin_lt_1e-3"])
    p = g["probe_vox_xyz"]
    assert np.abs(logits[p[:, 0], p[:, 1], p[:, 2]] - g["probe_logits"]).max() < 1e-4 * logits.std()


@pytest.mark.parametrize("mode", ["official"])
def test_panoptic_variant_writes_centers_and_instances(tmp_path, inputs_npz, mode, cached_models):
    out = tmp_path / "pt.npz"
    argv = ["--variant", "PT", "--inputs", str(inputs_npz), "--out", str(out), "--pano-mode", mode]
    assert infer.main(argv) == 0
    g = golden("panoptic-flashocc-r50-depth-tiny-pano")
    with np.load(out) as z:
        assert set(z.files) == {"occ_label", "centers_xyz", "centers_score", "centers_label", "pano_inst"}
        res = {k: z[k] for k in z.files}
    assert res["pano_inst"].dtype == np.int32 and res["pano_inst"].shape == (200, 200, 16)
    assert res["centers_label"].dtype == np.int64
    np.testing.assert_array_equal(res["centers_label"], g["centers_label"].astype(np.int64))
    np.testing.assert_allclose(res["centers_xyz"], g["centers_xyz"], atol=1e-3)
    same_labels = np.array_equal(res["occ_label"], g["occ_label"])
    if same_labels:  # identical semantics + centres -> the official assignment is reproduced id for id
        np.testing.assert_array_equal(res["pano_inst"], g["pano_inst"])
    else:
        assert (res["pano_inst"] == g["pano_inst"]).mean() > 0.999


def test_raw_images_are_preprocessed_like_the_exact_path(tmp_path, cached_models):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (6, 1, 45, 80, 3), dtype=np.uint8)
    raw = np.kron(base, np.ones((1, 1, 20, 20, 1), np.uint8))  # 6 blocky 900x1600 RGB images
    raw = raw.reshape(1, 6, 900, 1600, 3)
    inp = {k: v for k, v in seed0_inputs().items() if k not in ("imgs", "post_rots", "post_trans")}
    path = tmp_path / "raw.npz"
    np.savez(path, raw_imgs=raw, **inp)
    loaded = infer.load_inputs(path)
    np.testing.assert_array_equal(loaded["imgs"], preprocess_images(list(raw[0])))
    np.testing.assert_array_equal(loaded["post_rots"], seed0_inputs()["post_rots"])
    np.testing.assert_array_equal(loaded["post_trans"], seed0_inputs()["post_trans"])

    out = tmp_path / "raw_out.npz"
    assert infer.main(["--variant", "M0", "--inputs", str(path), "--out", str(out)]) == 0
    model, pool, mlp, _ = seed0_model("flashocc-r50-M0")
    with torch.inference_mode():
        (logits,) = model.forward_tensors(torch.from_numpy(loaded["imgs"]), *pool.network_inputs(), mlp)
    expected = logits[0].softmax(-1).argmax(-1).numpy()
    with np.load(out) as z:
        np.testing.assert_array_equal(z["occ_label"], expected)


def test_bad_inputs_give_one_clear_error_and_no_output(tmp_path, inputs_npz, capsys):
    full = dict(np.load(inputs_npz))
    out = tmp_path / "o.npz"

    def run(arrays, *extra):
        path = tmp_path / "bad.npz"
        np.savez(path, **arrays)
        rc = infer.main(["--variant", "M0", "--inputs", str(path), "--out", str(out), *extra])
        return rc, capsys.readouterr().err

    rc, err = run({k: v for k, v in full.items() if k != "intrins"})
    assert rc == 2 and "missing key 'intrins'" in err
    rc, err = run({**full, "bda": np.eye(4, dtype=np.float32)[None]})
    assert rc == 2 and "key 'bda': expected shape (1, 3, 3), got (1, 4, 4)" in err
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
