"""create_runner: the ONNX Runtime backend finds its export in the cache (no re-export) and matches PyTorch."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np

from flashocc_ros.backends import OCC_LABELS, create_runner, ensure_onnx, load_weights
from flashocc_ros.backends.onnx_export import EXPORT_FORMAT
from flashocc_ros.config import load_config
from test.backends.exports import exported_onnx, golden_images, reference_geometry, state_dict, torch_reference


def test_onnxruntime_runner_uses_the_cached_export(tmp_path):
    cfg = load_config(
        overrides={"model": {"variant": "flashocc-r50-M0", "backend": "onnxruntime", "engine_cache_dir": str(tmp_path)}}
    )
    sd, weights_id = load_weights(cfg.model)
    assert weights_id == load_weights(cfg.model)[1]  # stable identity of the deterministic weights
    assert all(np.array_equal(sd[k].numpy(), v.numpy()) for k, v in state_dict("M0").items())
    fmt = hashlib.sha256(EXPORT_FORMAT.encode()).hexdigest()[:6]
    cached = tmp_path / "onnx" / f"flashocc-r50-M0-{weights_id}-{fmt}.onnx"
    cached.parent.mkdir()
    shutil.copy(exported_onnx("M0")[0], cached)  # as if exported by an earlier run
    messages = []
    assert ensure_onnx(cfg.model, log=messages.append) == cached and messages == []
    geo = reference_geometry("M0")
    with create_runner(cfg, log=messages.append) as runner:
        assert runner.backend == "onnxruntime" and messages == []  # nothing exported
        runner.prepare(geo.pool, geo.mlp_input)
        labels = runner.infer(golden_images())[OCC_LABELS]
        assert runner.last_infer_ms > 0
    assert (labels == torch_reference("M0")[OCC_LABELS]).mean() >= 0.9999
