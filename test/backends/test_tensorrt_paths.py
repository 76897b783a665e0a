"""TensorRT / GPU error paths and backend selection without a GPU; GPU-only checks skip with the reason."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from flashocc_ros.backends import BackendError, available_backends, create_runner, resolve_backend
from flashocc_ros.backends.pooling import MAX_ROWS_PER_CELL, NUM_BEV_CELLS, POOL_INPUTS, depth_size
from flashocc_ros.backends.tensorrt_build import BuildOptions, build_engine_file, ensure_engine
from flashocc_ros.backends.tensorrt_env import cuda_device, import_tensorrt
from flashocc_ros.config import ConfigError, ModelConfig, get_variant, load_config
from test.reference.near_ties import top2_margin

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_GPU = torch.cuda.is_available()
GPU_REASON = (
    "needs an NVIDIA GPU with tensorrt installed"
    + ("" if HAS_GPU else " (torch.cuda.is_available() is False)")
    + ("" if HAS_TRT else " (tensorrt not installed)")
)


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here; the missing-package message cannot be observed")
def test_missing_tensorrt_gives_a_clear_error():
    with pytest.raises(BackendError, match=r"`tensorrt` is not installed.*onnxruntime or pytorch"):
        import_tensorrt()


@pytest.mark.skipif(HAS_GPU, reason="a GPU is visible; the no-GPU message cannot be observed")
def test_no_gpu_gives_a_clear_error():
    with pytest.raises(BackendError, match="no CUDA GPU is visible"):
        cuda_device("cuda:0")


@pytest.mark.skipif(HAS_GPU and HAS_TRT, reason="TensorRT is usable here")
def test_auto_falls_back_and_explicit_tensorrt_fails_clearly(tmp_path):
    reasons = available_backends()
    assert reasons["tensorrt"] and reasons["onnxruntime"] == "" and reasons["pytorch"] == ""
    assert resolve_backend(ModelConfig(backend="auto")) == "onnxruntime"
    cfg = load_config(overrides={"model": {"backend": "tensorrt", "engine_cache_dir": str(tmp_path)}})
    with pytest.raises(BackendError, match="tensorrt|GPU"):
        create_runner(cfg)
    assert not any(tmp_path.iterdir())  # nothing exported or built before the failure


@pytest.mark.parametrize("build", ["cache", "file"])
def test_int8_without_calibration_data_fails_before_touching_the_gpu(build, tmp_path):
    """Both engine builders name the missing calibration data, on any machine (checked before the GPU query)."""
    onnx = tmp_path / "m0.onnx"
    onnx.write_bytes(b"not read")
    variant, options = get_variant("M0"), BuildOptions(precision="int8")
    with pytest.raises(BackendError, match=r"precision int8 needs calibration data \(--calib-images"):
        if build == "cache":
            ensure_engine(onnx, variant, options, tmp_path / "cache")
        else:
            build_engine_file(onnx, variant, options, tmp_path / "m0.engine")


def test_backend_and_precision_validation():
    assert resolve_backend(ModelConfig(backend="pytorch")) == "pytorch"
    assert resolve_backend(ModelConfig(backend="auto", device="cuda", precision="int8")) == "tensorrt"
    with pytest.raises(ConfigError, match="int8 is only supported by the tensorrt backend"):
        resolve_backend(ModelConfig(backend="onnxruntime", precision="int8"))
    with pytest.raises(ConfigError, match="model.backend"):
        create_runner(ModelConfig(backend="openvino"))
    with pytest.raises(ConfigError, match="model.precision"):
        create_runner(ModelConfig(precision="bf16"))


def test_pytorch_fp16_on_cpu_is_refused():
    with pytest.raises(BackendError, match="fp16 with the pytorch backend needs model.device cuda"):
        create_runner(ModelConfig(variant="flashocc-r50-M0", backend="pytorch", precision="fp16"))


@pytest.mark.parametrize("short", ["M0", "M1", "PT", "PF"])
def test_build_profile_admits_the_nuscenes_rig_and_any_smaller_one(short):
    from flashocc_ros.backends.pooling import pool_tables_from_indices
    from flashocc_ros.network.geometry import prepare_geometry, reference_rig

    v = get_variant(short)
    prof = BuildOptions().profile(v)
    assert set(prof) == set(POOL_INPUTS[:3])
    tables = pool_tables_from_indices(prepare_geometry(v, reference_rig()).pool, v.depth_bins)
    rows = prof[POOL_INPUTS[0]]
    assert rows[0][0] == 1 and rows[1][0] == tables.num_rows and rows[2][0] == depth_size(v.depth_bins)
    cells = prof[POOL_INPUTS[2]]
    assert cells[1] == (tables.num_cells, tables.rows_per_cell)
    assert cells[2] == (NUM_BEV_CELLS, MAX_ROWS_PER_CELL)
    assert BuildOptions().canonical(v) != BuildOptions(workspace_mib=1024).canonical(v)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_GPU and HAS_TRT), reason=GPU_REASON)
def test_tensorrt_fp16_engine_agrees_with_pytorch(tmp_path):  # pragma: no cover - needs a GPU
    from flashocc_ros.backends.torch_runner import TorchRunner
    from flashocc_ros.network.geometry import prepare_geometry, reference_rig
    from flashocc_ros.network.weights import deterministic_images, deterministic_state_dict

    cfg = ModelConfig(variant="flashocc-r50-M0", backend="tensorrt", device="cuda", precision="fp16")
    cfg.engine_cache_dir = str(tmp_path)
    v = get_variant(cfg.variant)
    geo = prepare_geometry(v, reference_rig())
    img = deterministic_images(0)[0]
    sd = deterministic_state_dict(v.name, 0)
    with create_runner(cfg, with_logits=True) as trt_runner, TorchRunner(v, sd, "cuda", with_logits=True) as ref:
        for r in (trt_runner, ref):
            r.prepare(geo.pool, geo.mlp_input)
            r.infer(img)
        trt_logits, ref_logits = trt_runner.outputs["occ_logits"][0], ref.outputs["occ_logits"][0]
        deviation = float(np.abs(trt_logits - ref_logits).max())
        assert deviation <= 1e-2 * float(ref_logits.std()), "fp16 logits far from fp32"
        # labels may differ only where fp32's top-2 gap is within what fp16 moved the logits (near-ties)
        differ = trt_runner.outputs["occ_labels"][0] != ref.outputs["occ_labels"][0]
        assert np.all(top2_margin(ref_logits[differ]) < 2 * deviation)


def test_device_auto_resolves_to_what_pytorch_sees_and_cpu_never_picks_tensorrt(monkeypatch):
    import torch

    from flashocc_ros.backends import resolve_device

    assert ModelConfig().device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(ModelConfig()) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(ModelConfig()) == "cuda"
    assert resolve_device(ModelConfig(device="cpu")) == "cpu"
    assert resolve_device(ModelConfig(device="cuda:1")) == "cuda:1"
    # On the CPU, auto chooses among the CPU backends only (without even importing tensorrt).
    assert resolve_backend(ModelConfig(backend="auto", device="cpu")) == "onnxruntime"
    with pytest.raises(ConfigError, match=r"int8 needs the tensorrt backend on a CUDA GPU.*'cpu'"):
        resolve_backend(ModelConfig(backend="auto", device="cpu", precision="int8"))
    with pytest.raises(ConfigError, match=r"tensorrt runs on a CUDA GPU, but model.device is 'cpu'"):
        resolve_backend(ModelConfig(backend="tensorrt", device="cpu"))
    with pytest.raises(ConfigError, match=r"model.device: 'gpu' is not auto, cpu, cuda or cuda:N"):
        ModelConfig(device="gpu").validate()
    with pytest.raises(ConfigError, match=r"model.device: 'cuda:x'"):
        ModelConfig(device="cuda:x").validate()


def test_auto_choice_on_a_gpu_machine(monkeypatch):
    """The GPU branch of the choice, with the GPU and the providers simulated (CI has no GPU)."""
    import torch

    import flashocc_ros.backends as backends

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "tensorrt_available", lambda: (False, "no tensorrt"))
    monkeypatch.setattr(backends, "onnxruntime_gpu_available", lambda: False)
    auto = ModelConfig(backend="auto")
    # No TensorRT, CPU-only onnxruntime: the GPU through PyTorch, not ONNX Runtime on the CPU.
    assert resolve_backend(auto) == "pytorch" and backends.resolve_device(auto, "pytorch") == "cuda"
    # An explicit onnxruntime backend with device auto stays on the CPU instead of failing for want of a provider.
    assert backends.resolve_device(ModelConfig(backend="onnxruntime"), "onnxruntime") == "cpu"
    monkeypatch.setattr(backends, "onnxruntime_gpu_available", lambda: True)
    assert resolve_backend(auto) == "onnxruntime"
    assert backends.resolve_device(ModelConfig(backend="onnxruntime"), "onnxruntime") == "cuda"
    monkeypatch.setattr(backends, "tensorrt_available", lambda: (True, ""))
    assert resolve_backend(auto) == "tensorrt"
    assert resolve_backend(ModelConfig(backend="auto", device="cpu")) == "onnxruntime"  # cpu: never TensorRT


class _RecordingTensorRT:
    """Just enough of the tensorrt module for ``build_engine_bytes``: records the builder configuration."""

    __version__ = "10.0.0"

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    class BuilderFlag:
        FP16, INT8, TF32 = "FP16", "INT8", "TF32"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    def __init__(self, input_names):
        trt = self
        self.configs = []

        class Config:
            def __init__(self):
                self.flags = {"TF32"}  # TensorRT's default: TF32 allowed
                self.profiles, self.pools = [], {}
                trt.configs.append(self)

            def set_flag(self, flag):
                self.flags.add(flag)

            def clear_flag(self, flag):
                self.flags.discard(flag)

            def set_memory_pool_limit(self, pool, size):
                self.pools[pool] = size

            def add_optimization_profile(self, profile):
                self.profiles.append(profile)

        class Profile(dict):
            def set_shape(self, name, lo, opt, hi):
                self[name] = (lo, opt, hi)

        class Network:
            num_inputs = len(input_names)

            def get_input(self, i):
                return type("Tensor", (), {"name": input_names[i]})()

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"engine-bytes"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


@pytest.mark.parametrize("precision, flags", [("fp32", set()), ("fp16", {"FP16", "TF32"})])
def test_fp32_engines_are_built_without_tf32(monkeypatch, tmp_path, precision, flags):
    """TensorRT allows TF32 in float32 layers by default (10-bit mantissa inputs, ~1e-3 relative error): an fp32
    engine is built with it cleared, so that fp32 means IEEE float32 (the parity precision); fp16 keeps the
    default. The flag is part of the engine cache key, so engines built before are not reused."""
    from flashocc_ros.backends import tensorrt_build

    fake = _RecordingTensorRT(list(POOL_INPUTS[:3]) + ["img"])
    monkeypatch.setattr(tensorrt_build, "import_tensorrt", lambda: fake)
    v = get_variant("M0")
    options = BuildOptions(precision=precision)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    assert tensorrt_build.build_engine_bytes(onnx, v, options, log=lambda s: None) == b"engine-bytes"
    (config,) = fake.configs
    assert config.flags == flags and config.pools == {"WORKSPACE": 4096 << 20}
    assert config.profiles == [options.profile(v)]
    assert json.loads(options.canonical(v))["tf32"] is (precision != "fp32")
    assert BuildOptions(precision="fp32").canonical(v) != BuildOptions(precision="fp16").canonical(v)
