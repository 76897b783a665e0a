"""Checkpoint loading: mmcv / EMA / bare / module.-prefixed files, wrong variants, unsafe pickles, conversion."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from flashocc_ros.network.checkpoint import CheckpointError, check_state_dict, detect_variant, load_checkpoint
from flashocc_ros.network.weights import variant_manifest
from flashocc_ros.tools import convert_checkpoint


def _tiny_state_dict(variant: str) -> OrderedDict:
    """Right keys and shapes, but every tensor is a broadcast view of one value (files stay a few kB)."""
    one = torch.ones(1)
    sd = OrderedDict()
    for k, shape in variant_manifest(variant).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0, dtype=torch.int64)
        else:
            sd[k] = one.expand(shape) if shape else one[0]
    return sd


@pytest.fixture(scope="module")
def m0_sd():
    return _tiny_state_dict("flashocc-r50-M0")


@pytest.mark.parametrize(
    "layout",
    ["mmcv", "ema", "bare", "module_prefix", "mmcv_module_prefix"],
)
def test_accepted_layouts(tmp_path, m0_sd, layout):
    sd = m0_sd
    if "module_prefix" in layout:
        sd = OrderedDict((f"module.{k}", v) for k, v in sd.items())
    payload = {
        "mmcv": lambda: {"meta": {"epoch": 24, "CLASSES": ("car",), "config": "x"}, "state_dict": sd, "optimizer": {}},
        "ema": lambda: {"epoch": 24, "state_dict": sd, "updates": 1234},
        "bare": lambda: sd,
        "module_prefix": lambda: sd,
        "mmcv_module_prefix": lambda: {"meta": {}, "state_dict": sd},
    }[layout]()
    path = tmp_path / "w.pth"
    torch.save(payload, path)
    loaded, variant = load_checkpoint(path)
    assert variant == "flashocc-r50-M0"
    assert list(loaded) == list(m0_sd)
    assert load_checkpoint(path, "M0")[1] == "flashocc-r50-M0"


def test_wrong_variant_names_keys_and_the_matching_variant(tmp_path, m0_sd):
    path = tmp_path / "m0.pth"
    torch.save({"state_dict": m0_sd}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, "panoptic-flashocc-r50-depth-tiny-pano")
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys: img_view_transformer.depth_net.reduce_conv.0.weight" in msg
    assert "unexpected keys: img_view_transformer.depth_net.weight" in msg
    assert "DO match variant 'flashocc-r50-M0'" in msg
    # same keys, different shapes (M0 vs M1): shape mismatches are named
    with pytest.raises(CheckpointError, match=r"shape mismatches: .*depth_net.weight file \(108, 256, 1, 1\)"):
        load_checkpoint(path, "flashocc-r50")


def test_unknown_keys_give_closest_variant(tmp_path, m0_sd):
    sd = OrderedDict(m0_sd)
    sd.pop("occ_head.predicter.2.bias")
    sd["pts_bbox_head.weight"] = torch.zeros(1)
    assert detect_variant(sd) is None
    expected = r"closest 'flashocc-r50-M0' differs in 2 keys.*occ_head.predicter.2.bias"
    with pytest.raises(CheckpointError, match=expected):
        check_state_dict(sd)


def test_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "meta": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists(), "the pickle payload was executed"


def test_unreadable_and_non_tensor_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(junk)
    truncated = tmp_path / "truncated.pth"
    torch.save({"state_dict": {"a.weight": torch.zeros(100)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        load_checkpoint(truncated)
    odd = tmp_path / "odd.pth"
    torch.save({"state_dict": {"a.weight": torch.zeros(1), "b": 3}}, odd)
    with pytest.raises(CheckpointError, match="not tensors: b"):
        load_checkpoint(odd)


def test_convert_tool_writes_clean_file_with_variant(tmp_path, m0_sd, capsys):
    src = tmp_path / "official.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": OrderedDict((f"module.{k}", v) for k, v in m0_sd.items())}, src)
    dst = tmp_path / "clean.pth"
    assert convert_checkpoint.main([str(src), str(dst)]) == 0
    raw = torch.load(dst, weights_only=True)
    assert raw["flashocc_variant"] == "flashocc-r50-M0" and set(raw) == {"state_dict", "flashocc_variant", "meta"}
    assert list(raw["state_dict"]) == list(m0_sd)
    assert load_checkpoint(dst)[1] == "flashocc-r50-M0"
    # stored variant is checked: a PT request fails with the reason
    assert convert_checkpoint.main([str(dst), str(tmp_path / "x.pth"), "--variant", "PT"]) == 2
    assert "DO match variant 'flashocc-r50-M0'" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "content", [b"hello world\n", b"model:\n  variant: flashocc-r50-M0\n", b"", b"\x00\x01binary junk"]
)
def test_a_file_that_is_not_a_torch_checkpoint_is_named_so(tmp_path, content):
    path = tmp_path / "model.yaml"
    path.write_bytes(content)
    pattern = r"model.yaml: not a PyTorch checkpoint \((a text file|an empty file|starts)"
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path)


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, m0_sd):
    sd = OrderedDict(m0_sd)
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 4)
    sd[key] = sd[key].clone()
    sd[key].view(-1)[:3] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=rf"non-finite weights \(NaN or inf\) in {key} \(3 of"):
        load_checkpoint(path)
    sd[key] = torch.full_like(sd[key], float("inf"))
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=f"non-finite weights .* in {key}"):
        load_checkpoint(path)
