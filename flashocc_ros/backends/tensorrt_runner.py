"""TensorRT 10 runner: loads a serialized engine and runs it with the name-based tensor API (it only runs; engines
are built by ``tensorrt_build`` and found by the loaders in ``loaders``).

``tensorrt`` is imported lazily, only when this backend is used. Device buffers are CUDA tensors of PyTorch (a CUDA
build of torch is required next to tensorrt; no pycuda / cuda-python dependency), reused for every frame;
``execute_async_v3`` runs on a dedicated CUDA stream with pinned host buffers for the copies.

An engine is only loaded on the setup it was built for: given ``expected_key`` (``engine_cache.EngineKey``: TensorRT
version, GPU name, compute capability, precision, ONNX hash, calibration hash, build options), a differing engine is
refused before it is deserialized.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flashocc_ros.backends.base import (
    IMAGE_INPUT,
    IMAGE_SHAPE,
    MLP_INPUT,
    BackendError,
    Runner,
    input_names,
    output_specs,
)
from flashocc_ros.backends.engine_cache import EngineKey, EngineMismatchError, check_engine
from flashocc_ros.backends.pooling import MAX_ROWS_PER_CELL, SLOT_WIDTH, pool_tables_from_indices
from flashocc_ros.backends.tensorrt_env import cuda_device, import_tensorrt
from flashocc_ros.config import ModelVariant
from flashocc_ros.network.geometry import PoolIndices


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(
        self,
        variant: ModelVariant,
        engine_path: str | Path,
        device: str = "cuda",
        with_logits: bool = False,
        expected_key: EngineKey | None = None,
    ) -> None:
        super().__init__(variant, with_logits)
        import torch

        trt = import_tensorrt()
        self._trt = trt
        self.device = cuda_device(device)
        engine_path = Path(engine_path)
        if expected_key is not None:
            check_engine(engine_path, expected_key)
        self.engine_path = engine_path
        with torch.cuda.device(self.device):
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if engine is None:
                raise EngineMismatchError(
                    f"TensorRT {trt.__version__} could not deserialize {engine_path}: it was built by another "
                    "TensorRT version or for another GPU; rebuild it with `flashocc-export engine`"
                )
            self._engine = engine
            self._context = engine.create_execution_context()
            self._stream = torch.cuda.Stream(self.device)
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            if sorted(self._inputs) != sorted(input_names(variant)):
                raise BackendError(f"{engine_path}: inputs {self._inputs} != expected {input_names(variant)}")
            missing = [n for n in self.outputs if n not in self._outputs]
            if missing:
                raise BackendError(f"{engine_path}: lacks outputs {missing}; rebuild from an ONNX exported with them")
            # Device buffers for the image and every engine output (TensorRT needs an address for each output).
            known = {spec.name: spec for spec in output_specs(variant, with_logits=True)}
            self._dev: dict[str, torch.Tensor] = {}
            self._dev[IMAGE_INPUT] = torch.empty(IMAGE_SHAPE, dtype=torch.float32, device=self.device)
            self._context.set_input_shape(IMAGE_INPUT, IMAGE_SHAPE)
            for name in self._outputs:
                if name not in known:
                    raise BackendError(
                        f"{engine_path}: unexpected output {name!r} (not built from this package's ONNX)"
                    )
                dtype = _torch_dtype(trt.nptype(engine.get_tensor_dtype(name)))
                if dtype != _torch_dtype(known[name].dtype):
                    raise BackendError(f"{engine_path}: output {name} is {dtype}, expected {known[name].dtype}")
                self._dev[name] = torch.empty(known[name].shape, dtype=dtype, device=self.device)
            self._host_img = torch.empty(IMAGE_SHAPE, dtype=torch.float32, pin_memory=True)
            self.image = self._host_img.numpy()
            self._host_out = {
                name: torch.empty(arr.shape, dtype=self._dev[name].dtype, pin_memory=True)
                for name, arr in self.outputs.items()
            }
            self.outputs = {k: t.numpy() for k, t in self._host_out.items()}
            for name, t in self._dev.items():
                self._context.set_tensor_address(name, t.data_ptr())

    def describe(self) -> str:
        return f"tensorrt {self._trt.__version__} {self.engine_path.name} ({self.variant.short})"

    def _prepare(self, pool: PoolIndices, mlp_input: np.ndarray | None) -> None:
        import torch

        tables = pool_tables_from_indices(pool, self.variant.depth_bins)
        if tables.rows_per_cell > MAX_ROWS_PER_CELL:
            raise BackendError(
                f"rig puts {tables.rows_per_cell * SLOT_WIDTH} frustum points in one BEV cell; the engine profile "
                f"admits {MAX_ROWS_PER_CELL * SLOT_WIDTH}"
            )
        static = tables.as_inputs()
        if mlp_input is not None:
            static[MLP_INPUT] = mlp_input
        with torch.cuda.device(self.device):
            for name, arr in static.items():
                dev = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)
                self._dev[name] = dev
                if not self._context.set_input_shape(name, tuple(arr.shape)):
                    raise BackendError(
                        f"TensorRT rejected input {name} of shape {tuple(arr.shape)} (outside the profile)"
                    )
                self._context.set_tensor_address(name, dev.data_ptr())
            unresolved = self._context.infer_shapes()
            if unresolved:
                raise BackendError(f"TensorRT: shapes of {unresolved} are not specified")
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                if shape != tuple(self._dev[name].shape):
                    raise BackendError(
                        f"TensorRT output {name} has shape {shape}, expected {tuple(self._dev[name].shape)}"
                    )
            torch.cuda.synchronize(self.device)

    def _infer(self) -> None:
        import torch

        s = self._stream
        with torch.cuda.stream(s):
            self._dev[IMAGE_INPUT].copy_(self._host_img, non_blocking=True)
            if not self._context.execute_async_v3(s.cuda_stream):
                raise BackendError("TensorRT execute_async_v3 failed")
            for name, host in self._host_out.items():
                host.copy_(self._dev[name], non_blocking=True)
        s.synchronize()

    def _release(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None
        self._dev = {}


def _torch_dtype(np_dtype):
    import torch

    return torch.from_numpy(np.zeros(0, dtype=np_dtype)).dtype
