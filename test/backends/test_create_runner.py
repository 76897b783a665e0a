"""create_runner: the ONNX Runtime backend exports once into the cache, finds that export again (no re-export),
keys it by the weights, and matches PyTorch."""

from __future__ import annotations

import shutil

import numpy as np

import flashocc_ros.backends.onnx_export as onnx_export
from flashocc_ros.backends import OCC_LABELS, OCC_LOGITS, create_runner, ensure_onnx, load_weights
from flashocc_ros.config import load_config
from test.backends.exports import exported_onnx, golden_images, reference_geometry, state_dict, torch_reference
from test.reference.near_ties import top2_margin


def test_onnxruntime_runner_uses_the_cached_export(tmp_path, monkeypatch):
    cfg = load_config(
        overrides={"model": {"variant": "flashocc-r50-M0", "backend": "onnxruntime", "engine_cache_dir": str(tmp_path)}}
    )
    sd, weights_id = load_weights(cfg.model)
    assert weights_id == load_weights(cfg.model)[1]  # stable identity of the deterministic weights
    assert all(np.array_equal(sd[k].numpy(), v.numpy()) for k, v in state_dict("M0").items())

    exports = []
    session_export = exported_onnx("M0")[0]

    def export(variant, state, path, with_logits=False):  # the session's export stands in for a fresh one
        exports.append((path, with_logits))
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(session_export, path)

    monkeypatch.setattr(onnx_export, "export_onnx", export)
    messages = []
    first = ensure_onnx(cfg.model, with_logits=True, log=messages.append)
    assert len(exports) == 1 and first.is_file() and first.is_relative_to(tmp_path) and len(messages) == 1
    assert ensure_onnx(cfg.model, with_logits=True, log=messages.append) == first and len(exports) == 1
    other = ensure_onnx(cfg.model, with_logits=True, state_dict={"x": sd[next(iter(sd))] * 2}, weights_id="f" * 16)
    assert other != first and len(exports) == 2  # other weights: another cache entry
    geo = reference_geometry("M0")
    messages.clear()
    with create_runner(cfg, with_logits=True, log=messages.append) as runner:
        assert runner.backend == "onnxruntime" and messages == [] and len(exports) == 2  # nothing exported
        runner.prepare(geo.pool, geo.mlp_input)
        out = runner.infer(golden_images())
        labels, logits = out[OCC_LABELS][0].copy(), out[OCC_LOGITS][0].copy()
        assert runner.last_infer_ms > 0
    ref = torch_reference("M0")
    deviation = float(np.abs(logits - ref[OCC_LOGITS][0]).max())
    assert deviation <= 2e-3 * float(ref[OCC_LOGITS][0].std())
    differ = labels != ref[OCC_LABELS][0]
    assert np.all(top2_margin(ref[OCC_LOGITS][0][differ]) < 2 * deviation), "labels differ away from near-ties"
