"""The path users run — ``OccupancyPipeline`` on a runner, as the node, flashocc-infer, flashocc-predict and the demo
call it — against the official answers (golden data of the official implementation, seed-0 weights).

Inputs as a user hands them over: a ``RigCalibration`` of float64 matrices (as TF and the nuScenes tables give them)
and either the preprocessed network input of the golden run or the raw 900x1600 RGB camera images of the raw-image
golden run. Every backend that runs here (PyTorch CPU, ONNX Runtime CPU) and all four variants; the near-tie rules
are those of ``test/reference/near_ties.py``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from flashocc_ros.backends import CENTER_HEATMAP, CENTER_REG
from flashocc_ros.config import get_variant, load_config
from flashocc_ros.inference.pipeline import OccupancyPipeline
from flashocc_ros.network.geometry import reference_rig
from test.backends.exports import exported_onnx, golden_images
from test.model_helpers import GOLDEN
from test.reference.near_ties import check_centers, check_labels, check_panoptic
from test.reference.raw_images import SEED0_SHA256_16, raw_images

VARIANTS = ("M0", "M1", "PT", "PF")
BACKENDS = ("pytorch", "onnxruntime")
# Allowed deviation of the occupancy logits from the official ones, x their std: the golden data's bound for CPU
# fp32 runs whose float sums are grouped differently. The ONNX graph pools with gather + batched matmul + row sums
# instead of the sequential per-cell sum (backends/pooling.py); measured here 1.3e-5 to 4.9e-5, like PyTorch.
LOGIT_REL_TOL = {"pytorch": 1e-4, "onnxruntime": 1e-4}
# Official sha256[:16] of the (1, 6, 3, 256, 704) float32 network input made from the seed-0 raw images.
RAW_PREPROCESSED_SHA256_16 = "a79ec65b6c364fb2"


def pipeline_config(short: str, backend: str, tmp_path_factory):
    model = {
        "variant": get_variant(short).name,
        "backend": backend,
        "device": "cpu",
        "pano_mode": "official",
        "engine_cache_dir": str(tmp_path_factory.mktemp("engines")),
    }
    if backend == "onnxruntime":
        model["engine"] = str(exported_onnx(short)[0])
    return load_config(overrides={"model": model})


def run_pipeline(cfg, images) -> dict:
    """One frame through OccupancyPipeline on the float64 reference rig; the arrays the checks need (copied)."""
    with OccupancyPipeline(cfg, with_logits=True, log=lambda s: None) as pipe:
        pipe.set_calibration(reference_rig(float32=False))
        result = pipe.run(images)
        out = {
            "semantic": result.semantic.copy(),
            "logits": result.logits.copy(),
            "network_input_sha256_16": hashlib.sha256(pipe.runner.image.tobytes()).hexdigest()[:16],
        }
        if result.centers is not None:
            out.update(result.centers.numpy())
            out["panoptic"] = result.panoptic.copy()
            out["heatmap"] = pipe.runner.outputs[CENTER_HEATMAP][0].copy()
            out["reg"] = pipe.runner.outputs[CENTER_REG][0].copy()
    return out


def check_against_official(ours: dict, official, backend: str) -> None:
    logits = ours["logits"]
    tolerance = LOGIT_REL_TOL[backend] * float(logits.std())
    ix, iy, iz = official["probe_vox_xyz"].T
    err = float(np.abs(logits[ix, iy, iz] - official["probe_logits"]).max())
    assert err <= tolerance, f"probe logits differ by {err:.3g} (allowed {tolerance:.3g})"
    check_labels(ours["semantic"], official["occ_label"], logits, int(official["occ_margin_lt_1e-3"]), tolerance)
    if "centers_xyz" in official:
        match = check_centers(ours, official, ours["heatmap"], ours["reg"])
        check_panoptic(ours["panoptic"], official["pano_inst"], ours["semantic"], official["occ_label"], ours,
                       official, match)  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("short", VARIANTS)
def test_preprocessed_input_gives_the_official_answer(short, backend, tmp_path_factory):
    ours = run_pipeline(pipeline_config(short, backend, tmp_path_factory), golden_images())
    with np.load(GOLDEN / f"{get_variant(short).name}_seed0.npz") as official:
        check_against_official(ours, official, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("short", ("M0", "PT"))
def test_raw_camera_images_give_the_official_answer(short, backend, tmp_path_factory):
    images = list(raw_images(0))
    assert hashlib.sha256(np.stack(images)[None].tobytes()).hexdigest()[:16] == SEED0_SHA256_16
    ours = run_pipeline(pipeline_config(short, backend, tmp_path_factory), images)
    assert ours["network_input_sha256_16"] == RAW_PREPROCESSED_SHA256_16, "preprocessing differs from the official"
    with np.load(GOLDEN / f"raw_e2e_{get_variant(short).name}_seed0.npz") as official:
        check_against_official(ours, official, backend)
