"""GPU host path (flashocc_ros.network.gpu_preprocess) run on CPU tensors, the pipeline's choice of path, and the Pillow
fallbacks used where simplejpeg is missing (the device machine). CUDA-only checks carry the gpu marker."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from flashocc_ros.network.gpu_preprocess import LEVEL, deviation_stats, jpegs_into, preprocess_tensor
from flashocc_ros.network.preprocess import (
    decode_jpeg,
    jpeg_size,
    preprocess_image,
    preprocess_jpeg,
    simplejpeg_available,
)

CUDA = torch.cuda.is_available()


def textured_jpeg(w=1600, h=900, seed=0, quality=90) -> bytes:
    from flashocc_ros.tools.gpu_check import synthetic_jpegs

    return synthetic_jpegs(w, h, seed, quality)[0]


@pytest.fixture(scope="module")
def jpeg():
    return textured_jpeg()


def test_gpu_preprocessing_on_cpu_tensors_matches_the_exact_path(jpeg):
    rgb = decode_jpeg(jpeg)
    exact = preprocess_image(rgb)
    ours = preprocess_tensor(torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))).numpy()
    assert ours.shape == exact.shape == (3, 256, 704) and ours.dtype == np.float32
    dev = deviation_stats(ours, exact)
    # documented tolerance: resampler rounding only, at most 1 8-bit level (Pillow fixed point vs torch float)
    assert dev["max_levels"] <= 1.0 + 1e-3 and dev["mean_levels"] < 0.25, dev
    assert np.abs(ours - exact).max() <= LEVEL * 1.001
    # and much closer to the exact path than the CPU fast path (DCT-scaled decode + bilinear)
    fast = deviation_stats(preprocess_jpeg(jpeg), exact)
    assert dev["mean_levels"] < fast["mean_levels"]


def test_gpu_preprocessing_channel_order_and_other_sizes():
    # constant colour: B, G, R planes normalised with the RGB-ordered mean/std of their position (official)
    from flashocc_ros.config import IMAGE_AUG

    rgb = torch.zeros(3, 450, 800, dtype=torch.uint8)
    rgb[0], rgb[1], rgb[2] = 10, 120, 250
    out = preprocess_tensor(rgb)
    for i, value in enumerate((250, 120, 10)):
        np.testing.assert_allclose(out[i].numpy(), (value - IMAGE_AUG.mean[i]) / IMAGE_AUG.std[i], rtol=1e-6)
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess_tensor(torch.zeros(450, 800, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="smaller than"):
        preprocess_tensor(torch.zeros(3, 100, 800, dtype=torch.uint8))


def test_jpegs_into_a_cpu_tensor_and_bad_input(jpeg):
    out = torch.empty(2, 3, 256, 704)
    times = jpegs_into([jpeg, jpeg], out)
    assert times["decode"] >= 0 and times["decoder"] in ("pillow", "torchvision-libjpeg")
    assert torch.equal(out[0], out[1])
    with pytest.raises(ValueError, match="image 1: cannot decode JPEG"):
        jpegs_into([jpeg, b"\xff\xd8 not a jpeg"], out)
    with pytest.raises(ValueError, match=r"out: expected \(1, 3, 256, 704\)"):
        jpegs_into([jpeg], out)


def test_fast_path_without_simplejpeg_uses_pillow(jpeg, monkeypatch):
    """The device machine has no simplejpeg: header and DCT-scaled decode fall back to Pillow."""
    want_fast = preprocess_jpeg(jpeg)
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # import simplejpeg -> ImportError
    simplejpeg_available.cache_clear()
    try:
        assert not simplejpeg_available()
        assert jpeg_size(jpeg) == (900, 1600)
        fallback = preprocess_jpeg(jpeg)
        # Pillow's draft is also a DCT-domain 1/2 downscale: close to simplejpeg's result
        assert deviation_stats(fallback, want_fast)["mean_levels"] < 0.5
        png = io.BytesIO()
        Image.new("RGB", (32, 32)).save(png, format="PNG")
        with pytest.raises(ValueError, match="not a JPEG"):
            jpeg_size(png.getvalue())
    finally:
        simplejpeg_available.cache_clear()


def test_pipeline_keeps_the_cpu_path_without_a_gpu_and_refuses_a_forced_gpu_path():
    from flashocc_ros.backends.base import Runner
    from flashocc_ros.config import get_variant, load_config
    from flashocc_ros.inference.pipeline import OccupancyPipeline, PipelineError

    class CpuRunner(Runner):  # no weights needed to decide the path; like TorchRunner on the CPU
        backend = "pytorch"
        device = torch.device("cpu")
        device_image = None

        def _prepare(self, pool, mlp_input):
            pass

        def _infer(self):
            pass

    v = get_variant("M0")
    cfg = load_config(overrides={"model": {"variant": v.name, "backend": "pytorch", "device": "cpu"}})
    runner = CpuRunner(v)
    with OccupancyPipeline(cfg, runner=runner) as pipe:
        assert pipe.gpu_jpeg is False and "no device input tensor" in pipe.gpu_jpeg_reason
    with pytest.raises(PipelineError, match="gpu_jpeg: the GPU JPEG path cannot be used"):
        OccupancyPipeline(cfg, runner=CpuRunner(v), gpu_jpeg=True)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_gpu_jpeg_path_feeds_the_network_like_the_cpu_path():
    from flashocc_ros.config import load_config
    from flashocc_ros.inference.pipeline import OccupancyPipeline
    from flashocc_ros.network.geometry import reference_rig
    from flashocc_ros.tools.gpu_check import synthetic_jpegs

    jpegs = synthetic_jpegs()
    exact = np.stack([preprocess_image(decode_jpeg(j)) for j in jpegs])
    cfg = load_config(overrides={"model": {"variant": "flashocc-r50-M0", "backend": "pytorch", "device": "cuda"}})
    with OccupancyPipeline(cfg, gpu_jpeg=True) as pipe:
        pipe.set_calibration(reference_rig())
        gpu = pipe.run_jpeg(jpegs)
        assert pipe.last_jpeg_path == "gpu"
        dev = deviation_stats(pipe.runner.device_image.cpu().numpy(), exact)
        assert dev["mean_levels"] < 1.0 and dev["p99_levels"] <= 5.0, dev
        cpu = pipe.run(exact)
    assert (gpu.semantic == cpu.semantic).mean() > 0.99
