"""ONNX export of the temporal variants as an encoder graph (per frame) and a fusion graph (per run): standard
operators only, static shapes for the variant's F (only the pooling-table lengths vary, as in the single-frame
export), and ONNX Runtime running encoder-per-frame + fusion on the golden4d inputs gives the official answer
(logits 1e-4 x std at the probe voxels; labels, centres and panoptic by the near-tie rules)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from flashocc_ros.backends import BackendError
from flashocc_ros.backends.base import CENTER_OUTPUTS, OCC_LABELS, OCC_LOGITS
from flashocc_ros.backends.onnx_export4d import (
    ENCODER,
    FUSION,
    cost_volume_export,
    encoder_output_names,
    fusion_input_names,
    fusion_inputs,
    fusion_output_names,
    fusion_pool_tables,
    output_paths,
    read_temporal_metadata,
    stereo_grid_export,
    trtexec_commands,
    validate_temporal_onnx,
)
from flashocc_ros.backends.pooling import POOL_INPUTS, gather_pool, pool_tables_from_indices
from flashocc_ros.config import get_variant
from flashocc_ros.network.geometry import bev_pool, make_frustum
from flashocc_ros.network.model4d import curr_to_adj_sensor, split_inputs, temporal_geometry
from test.backends.exports import exported_temporal
from test.model4d_helpers import golden4d, seed0_inputs_4d
from test.reference.near_ties import check_centers, check_labels, check_panoptic

REL_TOL = 1e-4  # x std of the logits, as the other ONNX Runtime parity tests (test_pipeline_parity)
# Operators of the temporal graphs: the single-frame set (test_onnx_export.ALLOWED_OPS); the 4D-stereo cost volume
# adds Abs/Div/GridSample/Less/Neg/Squeeze/Sub. All in the default ONNX domain, all native in TensorRT 10.
ALLOWED_OPS = {
    "Add", "ArgMax", "BatchNormalization", "Cast", "Concat", "Constant", "ConstantOfShape", "Conv", "Equal",
    "Expand", "Gather", "Gemm", "GlobalAveragePool", "MatMul", "MaxPool", "Mul", "ReduceSum", "Relu", "Reshape",
    "Resize", "Shape", "Sigmoid", "Slice", "Softmax", "Softplus", "Transpose", "Unsqueeze", "Where",
}  # fmt: skip
STEREO_OPS = {"Abs", "Div", "GridSample", "Less", "Neg", "Squeeze", "Sub"}
POOL_DIMS = {"rows", "cells", "rows_per_cell"}


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_exported(short: str) -> dict[str, np.ndarray]:
    """Encoder graph once per golden frame, then the fusion graph with the slots [current, prev1, ...]."""
    v = get_variant(short)
    paths = exported_temporal(short)
    enc, fus = _session(paths[ENCODER]), _session(paths[FUSION])
    frames = split_inputs(seed0_inputs_4d(v.num_frames), v.num_frames)
    geo = temporal_geometry(v, frames)
    encoded = [enc.run(None, {"img": frames["imgs"][k]}) for k in range(v.num_frames)]
    kw = {}
    if v.stereo:
        kw = dict(
            stereo_feats=[e[1] for e in encoded],
            curr2adj=curr_to_adj_sensor(frames["sensor2egos"], frames["ego2globals"]),
            intrins=frames["intrins"][0],
            post_rot=frames["post_rots"][0],
            post_tran=frames["post_trans"][0],
        )
    feeds = fusion_inputs(v, [encoded[k][0] for k in range(v.bev_frames)], geo.pools, geo.mlp_input, **kw)
    assert list(feeds) == [i.name for i in fus.get_inputs()]
    return dict(zip([o.name for o in fus.get_outputs()], fus.run(None, feeds)))


def check_official(short: str, out: dict[str, np.ndarray]) -> None:
    from flashocc_ros.network.centers import decode_centers
    from flashocc_ros.network.panoptic import assign_instances

    v = get_variant(short)
    g = golden4d(v.name)
    logits, labels = out[OCC_LOGITS][0], out[OCC_LABELS][0]
    np.testing.assert_array_equal(labels, logits.argmax(-1))  # the in-graph argmax
    p = g["probe_vox_xyz"].astype(np.int64)
    err = float(np.abs(logits[p[:, 0], p[:, 1], p[:, 2]] - g["probe_logits"]).max())
    bound = REL_TOL * float(logits.std())
    assert err < bound, f"fusion graph logits differ by {err:.3g} (allowed {bound:.3g})"
    check_labels(labels.astype(np.uint8), g["occ_label"], logits, int(g["occ_margin_lt_1e-3"]), bound)
    if not v.panoptic:
        return
    heat, reg, height = (torch.from_numpy(out[n]) for n in CENTER_OUTPUTS)
    centers = decode_centers(heat, reg, height, score_threshold=0.3)
    ours = centers.numpy()
    match = check_centers(ours, g, out[CENTER_OUTPUTS[0]][0], out[CENTER_OUTPUTS[1]][0])
    semantic = torch.from_numpy(labels.astype(np.uint8))
    pano = assign_instances(semantic, centers, mode="official").panoptic.cpu().numpy().astype(np.int32)
    check_panoptic(pano, g["pano_inst"].astype(np.int32), labels, g["occ_label"], ours, g, match)


# -- the file interface (P2 export, ~15 s) ------------------------------------------------------------------------
def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_two_standard_onnx_graphs_with_a_sidecar_describing_them():
    import onnx

    v = get_variant("P2")
    paths = exported_temporal("P2")
    folder = paths[ENCODER].parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths.values())  # no temporaries
    meta = read_temporal_metadata(paths["metadata"])
    assert meta["variant"] == v.name and meta["frames"] == 2 and meta["frame_interval_s"] == 0.5
    for role in (ENCODER, FUSION):
        validate_temporal_onnx(paths[role], v, role, with_logits=True)  # checker, standard domains, interface
        proto = onnx.load(str(paths[role]))
        props = {p.key: p.value for p in proto.metadata_props}
        assert props["flashocc_role"] == role and props["flashocc_variant"] == v.name
        assert props["flashocc_weights_sha256"] == meta["weights_sha256"]
        graph = meta["graphs"][role]
        assert graph["file"] == paths[role].name
        assert [i["name"] for i in graph["inputs"]] == [i.name for i in proto.graph.input]
        assert [i["shape"] for i in graph["inputs"]] == [_dims(i) for i in proto.graph.input]
        assert [o["name"] for o in graph["outputs"]] == [o.name for o in proto.graph.output]
        ops = {n.op_type for n in proto.graph.node}
        assert ops <= ALLOWED_OPS, sorted(ops - ALLOWED_OPS)
    with pytest.raises(BackendError, match="wanted the 'fusion' graph"):
        validate_temporal_onnx(paths[ENCODER], v, FUSION)
    # the TensorRT profile of the pooling tables admits the golden sample's tables; trtexec lines name the files
    profile = meta["pool_profile"]
    tables = fusion_pool_tables(temporal_geometry(v, split_inputs(seed0_inputs_4d(2), 2)).pools, v.depth_bins)
    for name, arr in tables.as_inputs().items():
        if name in profile:
            lo, hi = profile[name]["min"], profile[name]["max"]
            assert all(a <= d <= b for a, d, b in zip(lo, arr.shape, hi)), (name, arr.shape, lo, hi)
    assert profile["pool_depth_index"]["max"] == [2 * 6 * 88 * 16 * 44, 16]
    cmds = trtexec_commands(meta)
    assert cmds[ENCODER] == f"trtexec --onnx={paths[ENCODER].name} --saveEngine={v.name}.encoder.fp16.engine --fp16"
    assert f"--onnx={paths[FUSION].name}" in cmds[FUSION] and "--minShapes=pool_depth_index:1x16," in cmds[FUSION]


def test_fusion_graph_is_static_for_fixed_frames_except_the_pooling_table_lengths():
    import onnx

    v = get_variant("P2")
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(exported_temporal("P2")[FUSION])))
    assert [i.name for i in proto.graph.input] == fusion_input_names(v)
    dims = {i.name: _dims(i) for i in proto.graph.input}
    assert dims["img_feats"] == [2, 6, 512, 16, 44] and dims["mlp_input"] == [1, 6, 27]
    assert dims["pool_bev_cell"] == [2 * 40000]
    for name, shape in dims.items():
        dynamic = {d for d in shape if isinstance(d, str)}
        assert dynamic <= (POOL_DIMS if name in POOL_INPUTS else set()), (name, shape)
    assert [o.name for o in proto.graph.output] == fusion_output_names(v, with_logits=True)
    for o in proto.graph.output:
        assert all(isinstance(d, int) and d > 0 for d in _dims(o)), (o.name, _dims(o))
    enc = onnx.load(str(exported_temporal("P2")[ENCODER]))
    assert [_dims(i) for i in enc.graph.input] == [[6, 3, 256, 704]]
    assert [o.name for o in enc.graph.output] == encoder_output_names(v)
    assert _dims(enc.graph.output[0]) == [6, 512, 16, 44]


# -- parity with the official answer ---------------------------------------------------------------------------------
def test_depth4d_encoder_per_frame_plus_fusion_matches_official():
    check_official("P2", run_exported("P2"))


@pytest.mark.slow
def test_longterm8f_encoder_per_frame_plus_fusion_matches_official():
    """Nine encoder runs + the 9-slot fusion graph (~65 s on 2 cores with the export)."""
    check_official("P9", run_exported("P9"))


@pytest.mark.skipif(
    os.environ.get("FLASHOCC_TEST_M2_EXPORT") != "1",
    reason="4D-stereo export + ONNX Runtime run take ~5 min on 2 cores; set FLASHOCC_TEST_M2_EXPORT=1",
)
def test_4d_stereo_encoder_per_frame_plus_fusion_matches_official():
    short = "M2"
    paths = exported_temporal(short)
    import onnx

    ops = {n.op_type for n in onnx.load(str(paths[FUSION])).graph.node}
    assert ops <= ALLOWED_OPS | STEREO_OPS, sorted(ops - ALLOWED_OPS - STEREO_OPS)
    check_official(short, run_exported(short))


# -- the pieces, cheap ----------------------------------------------------------------------------------------------
def test_slot_concatenated_pool_tables_pool_every_slot_like_bev_pool():
    v = get_variant("P2")
    frames = split_inputs(seed0_inputs_4d(2), 2)
    pools = temporal_geometry(v, frames).pools
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 6, v.depth_bins, 16, 44, generator=gen).softmax(2)
    context = torch.randn(2, 6, 80, 16, 44, generator=gen)
    tables = fusion_pool_tables(pools, v.depth_bins)
    t = [torch.from_numpy(a) for a in tables.as_inputs().values()]
    both = gather_pool(depth.reshape(12, -1, 16, 44), context.reshape(12, -1, 16, 44), *t, frames=2)
    assert both.shape == (2, 80, 200, 200)
    for k in range(2):
        single = [torch.from_numpy(a) for a in pool_tables_from_indices(pools[k], v.depth_bins).as_inputs().values()]
        torch.testing.assert_close(both[k : k + 1], gather_pool(depth[k], context[k], *single), rtol=0, atol=0)
        torch.testing.assert_close(both[k : k + 1], bev_pool(depth[k], context[k], pools[k]), rtol=1e-5, atol=1e-4)


def test_stereo_cost_volume_in_graph_form_equals_the_model():
    """The fusion graph's stereo grid (inverses as inputs, torch.where) and cost volume (out-of-place) against
    model4d's on the golden geometry: same values (the 4D-stereo parity of model4d is tested in test_model4d)."""
    from flashocc_ros.network.model4d import stereo_cost_volume, stereo_grid

    v = get_variant("M2")
    frames = split_inputs(seed0_inputs_4d(3), 3)

    frustum = make_frustum(v, stride=4)
    c2a = torch.from_numpy(curr_to_adj_sensor(frames["sensor2egos"], frames["ego2globals"])[0])
    k, r, tr = (torch.from_numpy(np.ascontiguousarray(frames[n][0])) for n in ("intrins", "post_rots", "post_trans"))
    ref = stereo_grid(frustum, c2a, k, r, tr)
    ours = stereo_grid_export(frustum, c2a, k, torch.inverse(k), r, torch.inverse(r), tr)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    assert (ref == -2).any() and (ref.abs() > 1).any()  # points behind the camera and outside the image exist
    gen = torch.Generator().manual_seed(0)
    curr, prev = torch.randn(2, 6, 16, 64, 176, generator=gen)
    sub = ref[:, : 8 * 64]  # 8 depth bins keep it cheap
    torch.testing.assert_close(
        cost_volume_export(curr, prev, sub), stereo_cost_volume(curr, prev, sub), rtol=1e-6, atol=1e-7
    )


def test_command_line_and_api_refuse_what_does_not_apply(tmp_path, capsys):
    from flashocc_ros.backends.onnx_export import export_onnx
    from flashocc_ros.tools.export import main

    assert main(["engine", "--variant", "P2", "-o", str(tmp_path / "p2.engine")]) == 2
    err = capsys.readouterr().err
    assert "P2" in err or "depth4d" in err
    assert "temporal" in err and "trtexec" in err
    p2 = get_variant("P2").name
    assert main(["build_only", "--set", f"model.variant={p2}", "--set", "model.backend=onnxruntime"]) == 2
    assert "build_only (model.backend onnxruntime)" in capsys.readouterr().err
    assert main(["build_only", "--set", f"model.variant={p2}"]) == 0  # auto: the pytorch temporal pipeline
    assert "nothing to build" in capsys.readouterr().out
    with pytest.raises(BackendError, match="temporal"):
        export_onnx("P2", {}, tmp_path / "x.onnx")
    with pytest.raises(BackendError, match="single-frame"):
        fusion_inputs("M0", [], [], None)
    assert output_paths(tmp_path / "a.onnx")[FUSION] == tmp_path / "a.fusion.onnx"
    assert output_paths(tmp_path / "a")[ENCODER] == tmp_path / "a.encoder.onnx"
    assert output_paths(tmp_path / "a")["metadata"] == tmp_path / "a.temporal.json"
    assert not list(tmp_path.iterdir())
    (tmp_path / "bad.temporal.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(BackendError, match="not a temporal export"):
        read_temporal_metadata(tmp_path / "bad.temporal.json")
