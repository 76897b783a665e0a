"""ONNX export of every variant: standard operators only, checker-valid, and ONNX Runtime == PyTorch (== golden)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flashocc_ros.backends import BackendError
from flashocc_ros.backends.base import CENTER_OUTPUTS, OCC_LABELS, OCC_LOGITS
from flashocc_ros.backends.onnx_export import input_names, output_names, read_metadata, validate_onnx
from flashocc_ros.backends.ort_runner import OnnxRuntimeRunner
from flashocc_ros.config import get_variant
from test.backends.exports import exported_onnx, golden_images, reference_geometry, torch_reference
from test.reference.near_ties import top2_margin

VARIANTS = ["M0", "M1", "PT", "PF"]
GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"
# Every operator the exported graphs may contain: all in the default ONNX domain, all native in TensorRT 10.
ALLOWED_OPS = {
    "Add", "ArgMax", "BatchNormalization", "Cast", "Concat", "Constant", "ConstantOfShape", "Conv", "Equal",
    "Expand", "Gather", "Gemm", "GlobalAveragePool", "MatMul", "MaxPool", "Mul", "ReduceSum", "Relu", "Reshape",
    "Resize", "Shape", "Sigmoid", "Slice", "Softmax", "Softplus", "Transpose", "Unsqueeze", "Where",
}  # fmt: skip


@pytest.fixture(scope="module", params=VARIANTS)
def ort_outputs(request):
    short = request.param
    path, op_types = exported_onnx(short)
    geo = reference_geometry(short)
    with OnnxRuntimeRunner(get_variant(short), path, "cpu", with_logits=True) as runner:
        runner.prepare(geo.pool, geo.mlp_input)
        out = {k: v.copy() for k, v in runner.infer(golden_images()).items()}
    return short, path, op_types, out


def test_graph_is_standard_onnx_with_the_documented_interface(ort_outputs):
    short, path, op_types, _ = ort_outputs
    v = get_variant(short)
    assert set(op_types) <= ALLOWED_OPS, sorted(set(op_types) - ALLOWED_OPS)
    assert "ScatterElements" not in op_types and "ScatterND" not in op_types
    validate_onnx(path, v, with_logits=True)  # checker + domains + interface, from the file
    meta = read_metadata(path)
    assert meta["flashocc_variant"] == v.name
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in proto.graph.input] == input_names(v)
    assert [o.name for o in proto.graph.output] == output_names(v, with_logits=True)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims["img"] == [6, 3, 256, 704]
    assert dims["pool_depth_index"] == ["rows", 16] and dims["pool_cell_rows"] == ["cells", "rows_per_cell"]


def test_onnxruntime_matches_pytorch(ort_outputs):
    short, _, _, ort = ort_outputs
    ref = torch_reference(short)
    logits_ref = ref[OCC_LOGITS][0]
    scale = float(logits_ref.std())
    assert np.abs(ort[OCC_LOGITS][0] - logits_ref).max() <= 2e-3 * scale
    same = ort[OCC_LABELS] == ref[OCC_LABELS]
    assert same.mean() >= 0.9999
    near_tie = top2_margin(logits_ref) < 1e-3 * scale
    assert np.all(same[0] | near_tie), "labels differ away from near-ties"
    for name in CENTER_OUTPUTS if get_variant(short).panoptic else ():
        a, b = ort[name], ref[name]
        assert np.abs(a - b).max() <= 2e-3 * float(b.std()) + 1e-6, name


def test_onnxruntime_matches_golden_reference(ort_outputs):
    short, _, _, ort = ort_outputs
    v = get_variant(short)
    golden_file = GOLDEN_DIR / f"{v.name}_seed0.npz"
    if not golden_file.is_file():
        pytest.skip(f"golden reference {golden_file.name} not in test/data/golden")
    g = np.load(golden_file)
    labels = ort[OCC_LABELS][0]
    assert (labels == g["occ_label"]).mean() >= 0.9999
    assert int((labels != g["occ_label"]).sum()) <= int(g["occ_margin_lt_1e-3"])
    ix, iy, iz = g["probe_vox_xyz"].T
    probe = ort[OCC_LOGITS][0][ix, iy, iz]
    assert np.abs(probe - g["probe_logits"]).max() <= 2e-3 * float(g["probe_logits"].std())


def test_onnx_runner_refuses_mismatching_files_and_misuse(tmp_path):
    path, _ = exported_onnx("M0")
    with pytest.raises(BackendError, match="exported for 'flashocc-r50-M0'"):
        OnnxRuntimeRunner(get_variant("PT"), path)
    with pytest.raises(FileNotFoundError):
        OnnxRuntimeRunner(get_variant("M0"), tmp_path / "none.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(BackendError, match="could not load"):
        OnnxRuntimeRunner(get_variant("M0"), tmp_path / "bad.onnx")
    with pytest.raises(BackendError, match="int8"):
        OnnxRuntimeRunner(get_variant("M0"), path, precision="int8")
    runner = OnnxRuntimeRunner(get_variant("M0"), path)
    with pytest.raises(BackendError, match="prepare"):
        runner.infer()
    geo = reference_geometry("M0")
    runner.prepare(geo.pool)
    with pytest.raises(ValueError, match="expected shape"):
        runner.infer(np.zeros((6, 3, 128, 352), np.float32))
    runner.release()
    with pytest.raises(BackendError, match="released"):
        runner.infer()
