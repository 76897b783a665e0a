"""OccupancyPipeline: calibration caching, exact and JPEG paths, backends, timings and input errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

from flashocc_ros.backends import OCC_LABELS
from flashocc_ros.config import get_variant, load_config, to_dict
from flashocc_ros.inference.pipeline import TIMING_KEYS, OccupancyPipeline, PipelineError, postprocess_device
from flashocc_ros.network.geometry import RigCalibration, reference_rig
from flashocc_ros.network.preprocess import auto_workers
from test.backends.exports import exported_onnx, golden_images, torch_reference


def ort_config(short: str, tmp_path_factory):
    path, _ = exported_onnx(short)
    cache = tmp_path_factory.mktemp("cache")
    return load_config(
        overrides={
            "model": {
                "variant": get_variant(short).name,
                "backend": "onnxruntime",
                "engine": str(path),
                "engine_cache_dir": str(cache),
            }
        }
    )


@pytest.fixture(scope="module")
def m0_pipeline(tmp_path_factory):
    pipe = OccupancyPipeline(ort_config("M0", tmp_path_factory), log=lambda s: None)
    yield pipe
    pipe.close()


def moved_rig(dx: float) -> RigCalibration:
    rig = reference_rig()
    s2e = rig.sensor2ego.copy()
    s2e[:, 0, 3] += dx
    return RigCalibration(rig.intrinsics, s2e, rig.ego2global, rig.image_hw)


def smooth_images(seed: int = 0, hw=(900, 1600)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float32)
    out = []
    for _ in range(6):
        f = rng.uniform(0.002, 0.02, size=(3, 2))
        img = np.stack([127 + 100 * np.sin(f[c, 0] * u + f[c, 1] * v + c) for c in range(3)], -1)
        out.append(img.astype(np.uint8))
    return out


def test_calibration_is_cached_per_rig(m0_pipeline):
    pipe = m0_pipeline
    rig = reference_rig()
    assert pipe.set_calibration(rig) is True
    before = pipe.pool_index_computations
    assert pipe.set_calibration(reference_rig()) is False  # same values, new object: nothing recomputed
    assert pipe.set_calibration(moved_rig(0.5)) is True
    assert pipe.pool_index_computations == before + 1
    assert pipe.set_calibration(rig) is True  # back to the first rig: taken from the per-calibration cache
    assert pipe.pool_index_computations == before + 1


def test_preprocessed_input_matches_the_pytorch_reference(m0_pipeline):
    m0_pipeline.set_calibration(reference_rig())
    result = m0_pipeline.run(golden_images())
    ref = torch_reference("M0")[OCC_LABELS][0]
    assert result.semantic.shape == (200, 200, 16) and result.semantic.dtype == np.uint8
    assert (result.semantic == ref).mean() >= 0.9999
    assert result.panoptic is None and result.instances is None
    assert set(result.timings_ms) == set(TIMING_KEYS) and result.timings_ms["inference"] > 0
    assert m0_pipeline.backend_name == "onnxruntime"


def test_exact_jpeg_path_equals_decoded_rgb_path_and_fast_path_runs(m0_pipeline):
    import simplejpeg

    from flashocc_ros.network.preprocess import decode_jpeg

    pipe = m0_pipeline
    pipe.set_calibration(reference_rig())
    jpegs = [simplejpeg.encode_jpeg(img, quality=90, colorspace="RGB") for img in smooth_images()]
    times = pipe.load_jpegs(jpegs, exact=True)
    assert times["decode"] > 0 and times["preprocess"] > 0
    exact_input = pipe.runner.image.copy()
    pipe.load_images([decode_jpeg(j) for j in jpegs])
    np.testing.assert_array_equal(pipe.runner.image, exact_input)  # exact JPEG path == official path on RGB
    fast = pipe.run_jpeg(jpegs)
    # the fast decode path feeds the network nearly the same input (resampling differences only)
    assert float(np.abs(pipe.runner.image - exact_input).mean()) < 0.05
    # ...and the network runs on exactly that input (the JPEG path's buffer is what inference reads)
    np.testing.assert_array_equal(fast.semantic, pipe.run(pipe.runner.image.copy()).semantic)
    assert set(fast.timings_ms) == set(TIMING_KEYS) and fast.timings_ms["decode"] > 0


def test_parallel_jpeg_loading_equals_the_sequential_fast_path(m0_pipeline):
    import simplejpeg

    from flashocc_ros.network.preprocess import preprocess_jpeg

    pipe = m0_pipeline
    pipe.set_calibration(reference_rig())
    jpegs = [simplejpeg.encode_jpeg(img, quality=88, colorspace="RGB") for img in smooth_images(seed=3)]
    expected = np.stack([preprocess_jpeg(j) for j in jpegs])
    times = pipe.load_jpegs(jpegs)  # model.preprocess_threads 0: one per image up to the cores (2 here)
    np.testing.assert_array_equal(pipe.runner.image, expected)
    assert times["decode"] > 0 and times["preprocess"] > 0
    sequential = OccupancyPipeline(pipe.cfg, runner=pipe.runner, preprocess_workers=1)  # shares the runner
    sequential.set_calibration(reference_rig())
    pipe.runner.image[:] = 0
    sequential.load_jpegs(jpegs)
    np.testing.assert_array_equal(pipe.runner.image, expected)
    truncated = list(jpegs)
    truncated[3] = jpegs[3][: len(jpegs[3]) // 2]  # the header parses; decoding fails on a worker thread
    with pytest.raises(PipelineError, match=r"jpegs\[3\] \(CAM_BACK_LEFT\): cannot decode JPEG"):
        pipe.load_jpegs(truncated)
    assert pipe.cfg.model.preprocess_threads == 0 and pipe._batch.workers == auto_workers()
    cfg3 = load_config(overrides={"model": {**to_dict(pipe.cfg)["model"], "preprocess_threads": 3}})
    three = OccupancyPipeline(cfg3, runner=pipe.runner)  # shares the runner: not closed (that releases it)
    assert three._batch.workers == 3  # from the config
    three.set_calibration(reference_rig())
    pipe.runner.image[:] = 0
    three.load_jpegs(jpegs)
    np.testing.assert_array_equal(pipe.runner.image, expected)
    three._batch.close()
    with pytest.raises(ValueError, match="workers: expected >= 1, or 0 for auto, got -1"):
        OccupancyPipeline(pipe.cfg, runner=pipe.runner, preprocess_workers=-1)


def test_calibration_step_runs_while_the_jpegs_decode(m0_pipeline, monkeypatch):
    """run_jpeg(calibrate=...) (what the node does on a moving vehicle): the same answer as calibrating first,
    with the calibration step running on the calling thread while the worker threads are still decoding."""
    import threading

    import simplejpeg

    from flashocc_ros.network import preprocess

    pipe = m0_pipeline
    jpegs = [simplejpeg.encode_jpeg(img, quality=90, colorspace="RGB") for img in smooth_images(seed=5)]
    pipe.set_calibration(reference_rig())
    moved = moved_rig(0.7)
    pipe.set_calibration(moved)
    expected = pipe.run_jpeg(jpegs).semantic.copy()
    pipe.set_calibration(reference_rig())

    events: list[tuple[str, float, int]] = []
    decode = preprocess._jpeg_item

    def recorded_decode(*args):
        events.append(("decode start", time.perf_counter(), threading.get_ident()))
        try:
            return decode(*args)
        finally:
            events.append(("decode end", time.perf_counter(), threading.get_ident()))

    def calibrate():
        events.append(("calibrate", time.perf_counter(), threading.get_ident()))
        pipe.set_calibration(moved)

    monkeypatch.setattr(preprocess, "_jpeg_item", recorded_decode)
    result = pipe.run_jpeg(jpegs, calibrate=calibrate)
    np.testing.assert_array_equal(result.semantic, expected)
    assert pipe.calibration is moved
    calls = [e for e in events if e[0] == "calibrate"]
    ends = [t for name, t, _ in events if name == "decode end"]
    assert len(calls) == 1 and len(ends) == 6
    assert calls[0][2] == threading.get_ident() and calls[0][1] < max(ends)  # this thread, during the decode
    assert {tid for name, _, tid in events if name == "decode start"} != {threading.get_ident()}

    def broken():
        raise ValueError("calibration puts no frustum point inside the BEV grid")

    events.clear()
    with pytest.raises(ValueError, match="no frustum point"):  # the calibration's error, after the decode
        pipe.run_jpeg(jpegs, calibrate=broken)
    assert len([e for e in events if e[0] == "decode end"]) == 6
    small = simplejpeg.encode_jpeg(np.zeros((450, 800, 3), np.uint8), colorspace="RGB")
    with pytest.raises(PipelineError, match=r"images\[0\] \(CAM_FRONT_LEFT\): size 800x450 differs"):
        pipe.run_jpeg([small] + jpegs[1:], calibrate=calibrate)  # sizes checked against the new calibration
    np.testing.assert_array_equal(pipe.run_jpeg(jpegs, calibrate=calibrate).semantic, expected)


def test_bad_inputs_are_named(m0_pipeline, tmp_path_factory):
    fresh = OccupancyPipeline(ort_config("M0", tmp_path_factory), log=lambda s: None)
    with pytest.raises(PipelineError, match="no calibration"):
        fresh.run(golden_images())
    fresh.close()
    pipe = m0_pipeline
    pipe.set_calibration(reference_rig())
    with pytest.raises(PipelineError, match="expected 6 images"):
        pipe.run(smooth_images()[:5])
    small = [np.zeros((450, 800, 3), np.uint8)] * 6
    with pytest.raises(PipelineError, match=r"images\[0\] \(CAM_FRONT_LEFT\): size 800x450 differs"):
        pipe.run(small)
    with pytest.raises(PipelineError, match="RGB uint8"):
        pipe.run([np.zeros((900, 1600), np.uint8)] * 6)
    with pytest.raises(PipelineError, match=r"jpegs\[2\] \(CAM_FRONT_RIGHT\): cannot decode"):
        import simplejpeg

        good = simplejpeg.encode_jpeg(smooth_images()[0], colorspace="RGB")
        pipe.run_jpeg([good, good, b"\xff\xd8garbage", good, good, good])
    with pytest.raises(PipelineError, match="preprocessed array"):
        pipe.run(np.zeros((6, 3, 128, 352), np.float32))


def test_panoptic_variant_returns_instances(tmp_path_factory):
    cfg = ort_config("PT", tmp_path_factory)
    with OccupancyPipeline(cfg, log=lambda s: None) as pipe:
        pipe.set_calibration(reference_rig())
        result = pipe.run(golden_images())
    assert result.panoptic.shape == (200, 200, 16) and result.panoptic.dtype == np.int32
    ids = np.unique(result.panoptic[result.panoptic >= 18])
    assert set(ids.tolist()) <= set(result.instances.id.cpu().numpy().tolist())
    things = result.panoptic >= 18
    assert np.all(
        result.semantic[~things & (result.panoptic != 0)] == result.panoptic[~things & (result.panoptic != 0)]
    )
    assert len(result.centers.score) >= len(result.instances)


def test_postprocess_device_follows_the_runner():
    from types import SimpleNamespace

    import torch

    assert postprocess_device(SimpleNamespace(device="cpu")) == torch.device("cpu")
    assert postprocess_device(SimpleNamespace()) == torch.device("cpu")  # a runner without a device attribute
    want = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert postprocess_device(SimpleNamespace(device=torch.device("cuda:0"))) == want  # no usable CUDA: the CPU


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_panoptic_postprocessing_on_cuda_equals_the_cpu(tmp_path_factory):
    import torch

    cfg = ort_config("PT", tmp_path_factory)
    with OccupancyPipeline(cfg, log=lambda s: None) as pipe:
        pipe.set_calibration(reference_rig())
        pipe.postprocess_device = torch.device("cpu")
        on_cpu = pipe.run(golden_images())
        pipe.postprocess_device = torch.device("cuda")
        on_gpu = pipe.run(golden_images())
    np.testing.assert_array_equal(on_gpu.panoptic, on_cpu.panoptic)
    assert on_gpu.centers.xyz.is_cuda
    np.testing.assert_array_equal(on_gpu.instances.numpy().voxel_count, on_cpu.instances.numpy().voxel_count)


def test_pytorch_backend_through_the_config(tmp_path):
    cfg = load_config(
        overrides={"model": {"variant": "flashocc-r50-M0", "backend": "pytorch", "engine_cache_dir": str(tmp_path)}}
    )
    with OccupancyPipeline(cfg) as pipe:
        pipe.set_calibration(reference_rig())
        result = pipe.run(golden_images())
    np.testing.assert_array_equal(result.semantic, torch_reference("M0")[OCC_LABELS][0])
    assert pipe.backend_name == "pytorch"
