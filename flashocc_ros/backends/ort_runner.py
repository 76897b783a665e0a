"""ONNX Runtime runner: CPU execution provider, or CUDA / TensorRT execution providers when installed.

Inputs and outputs are bound once with IOBinding to the runner's preallocated numpy buffers, so ``infer()`` runs
``run_with_iobinding`` without allocating input or output arrays.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from flashocc_ros.backends.base import (
    EXPORT_FORMAT,
    IMAGE_INPUT,
    IMAGE_SHAPE,
    MLP_INPUT,
    BackendError,
    Runner,
    input_names,
)
from flashocc_ros.backends.pooling import pool_tables_from_indices
from flashocc_ros.config import ModelVariant
from flashocc_ros.network.geometry import PoolIndices


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError(
            "ONNX Runtime backend: the Python package `onnxruntime` is not installed (pip install onnxruntime, or "
            "onnxruntime-gpu for CUDA)"
        ) from exc
    return onnxruntime


def choose_providers(device: str, precision: str = "fp32", trt_cache_dir: str | None = None) -> list:
    """Execution providers for ``device``: TensorRT EP (if present) > CUDA EP > CPU on cuda[:N]; CPU on cpu."""
    ort = import_onnxruntime()
    available = set(ort.get_available_providers())
    if device == "cpu":
        return ["CPUExecutionProvider"]
    device_id = int(device.split(":", 1)[1]) if ":" in device else 0
    providers: list = []
    if "TensorrtExecutionProvider" in available:
        opts = {"device_id": device_id, "trt_fp16_enable": precision in ("fp16", "int8")}
        if trt_cache_dir:
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir))
        providers.append(("TensorrtExecutionProvider", opts))
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": device_id}))
    if not providers:
        raise BackendError(
            f"ONNX Runtime: device {device!r} requested but this onnxruntime build has no CUDA/TensorRT execution "
            f"provider (available: {sorted(available)}); install onnxruntime-gpu or set model.device: cpu"
        )
    return [*providers, "CPUExecutionProvider"]


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(
        self,
        variant: ModelVariant,
        onnx_path: str | Path,
        device: str = "cpu",
        with_logits: bool = False,
        precision: str = "fp32",
        threads: int | None = None,
        trt_cache_dir: str | None = None,
    ) -> None:
        super().__init__(variant, with_logits)
        ort = import_onnxruntime()
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
        if precision == "int8":
            raise BackendError("model.precision int8 is only supported by the tensorrt backend")
        self.device = device
        self.providers = choose_providers(device, precision, trt_cache_dir)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
            threads = int(os.environ["OMP_NUM_THREADS"])
        if threads:
            so.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(onnx_path), so, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"ONNX Runtime could not load {onnx_path}: {exc}") from exc
        self._check_model(onnx_path)
        self._on_gpu = self.session.get_providers()[0] != "CPUExecutionProvider"
        self._device_id = int(device.split(":", 1)[1]) if ":" in device else 0
        self._binding = self.session.io_binding()
        self._binding.bind_input(IMAGE_INPUT, "cpu", 0, np.float32, IMAGE_SHAPE, self.image.ctypes.data)
        for name, arr in self.outputs.items():
            self._binding.bind_output(name, "cpu", 0, arr.dtype, arr.shape, arr.ctypes.data)
        self._static: dict[str, object] = {}

    def _check_model(self, onnx_path: Path) -> None:
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("flashocc_format") != EXPORT_FORMAT:
            raise BackendError(
                f"{onnx_path}: not exported by flashocc-export (format {meta.get('flashocc_format')!r}, "
                f"expected {EXPORT_FORMAT!r})"
            )
        if meta.get("flashocc_variant") != self.variant.name:
            raise BackendError(
                f"{onnx_path}: exported for {meta.get('flashocc_variant')!r}, config wants {self.variant.name!r}"
            )
        have_in = [i.name for i in self.session.get_inputs()]
        if have_in != input_names(self.variant):
            raise BackendError(f"{onnx_path}: inputs {have_in} != expected {input_names(self.variant)}")
        have_out = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self.outputs if n not in have_out]
        if missing:
            raise BackendError(f"{onnx_path}: lacks outputs {missing}; re-export (e.g. --logits)")

    def describe(self) -> str:
        return f"onnxruntime {self.session.get_providers()[0]} ({self.variant.short})"

    def _prepare(self, pool: PoolIndices, mlp_input: np.ndarray | None) -> None:
        ort = import_onnxruntime()
        static = pool_tables_from_indices(pool, self.variant.depth_bins).as_inputs()
        if mlp_input is not None:
            static[MLP_INPUT] = mlp_input
        self._static = {}
        for name, arr in static.items():
            arr = np.ascontiguousarray(arr)
            if self._on_gpu:  # keep rig tables on the GPU: copied once per calibration, not per frame
                value = ort.OrtValue.ortvalue_from_numpy(arr, "cuda", self._device_id)
            else:
                value = ort.OrtValue.ortvalue_from_numpy(arr)
            self._static[name] = (arr, value)  # the array must outlive the binding
            self._binding.bind_ortvalue_input(name, value)

    def _infer(self) -> None:
        self.session.run_with_iobinding(self._binding)

    def _release(self) -> None:
        self._binding = None
        self._static = {}
        self.session = None
