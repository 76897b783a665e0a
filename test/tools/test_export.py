"""flashocc-export command line: error paths without a GPU, build_only decisions, engine metadata (info).
(The `onnx` sub-command is exercised by test/backends/exports.py, which makes every test export through it.)"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from flashocc_ros.backends.engine_cache import write_engine
from flashocc_ros.tools.export import main
from test.backends.test_engine_cache import make_key

NO_TRT_GPU = not (torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None)


@pytest.mark.skipif(not NO_TRT_GPU, reason="TensorRT and a GPU are present")
def test_engine_without_gpu_fails_cleanly_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "m0.engine"
    rc = main(["engine", "--variant", "M0", "--precision", "fp16", "-o", str(out), "--cache-dir", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "flashocc-export engine: error:" in err and ("tensorrt" in err or "GPU" in err)
    assert list(tmp_path.iterdir()) == []


def test_build_only_for_pytorch_needs_nothing(capsys):
    assert main(["build_only", "--set", "model.backend=pytorch"]) == 0
    assert "nothing to build" in capsys.readouterr().out


def test_build_only_reports_config_errors(capsys):
    assert main(["build_only", "--set", "model.backend=onnxruntime", "--set", "model.precision=int8"]) == 2
    assert "int8 is only supported by the tensorrt backend" in capsys.readouterr().err
    assert main(["build_only", "--set", "model.precision"]) == 2
    assert "expected key=value" in capsys.readouterr().err


def test_build_only_uses_an_existing_onnx(tmp_path, capsys):
    from test.backends.exports import exported_onnx

    path, _ = exported_onnx("M0")
    rc = main(["build_only", "--set", "model.backend=onnxruntime", "--set", f"model.engine={path}"])
    assert rc == 0 and f"ONNX ready at {path}" in capsys.readouterr().out


def test_info_prints_engine_metadata_and_refuses_unknown_engines(tmp_path, capsys):
    key = make_key()
    engine = write_engine(tmp_path / "x.engine", b"plan", key)
    assert main(["info", str(engine)]) == 0
    assert json.loads(capsys.readouterr().out)["gpu_name"] == key.gpu_name
    (tmp_path / "y.engine").write_bytes(b"plan")
    assert main(["info", str(tmp_path / "y.engine")]) == 2
    assert "no metadata file" in capsys.readouterr().err
