"""TensorRT 10 engines: build from the exported ONNX (fp32 / fp16 / int8) and run with the name-based tensor API.

``tensorrt`` is imported lazily, only when this backend is used. Device buffers are CUDA tensors of PyTorch (a CUDA
build of torch is required next to tensorrt; no pycuda / cuda-python dependency), reused for every frame;
``execute_async_v3`` runs on a dedicated CUDA stream with pinned host buffers for the copies.

Engines are only loaded on the setup they were built for: see ``engine_cache`` (TensorRT version, GPU name,
compute capability, precision, ONNX hash, calibration hash, build options).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashocc_ros.backends.base import IMAGE_INPUT, IMAGE_SHAPE, MLP_INPUT, BackendError, Runner, output_specs
from flashocc_ros.backends.engine_cache import (
    EngineCache,
    EngineKey,
    EngineMismatchError,
    check_engine,
    file_sha256,
    write_engine,
)
from flashocc_ros.backends.pooling import (
    MAX_ROWS_PER_CELL,
    NUM_BEV_CELLS,
    POOL_INPUTS,
    SLOT_WIDTH,
    depth_size,
    pool_tables_from_indices,
)
from flashocc_ros.backends.tensorrt_env import cuda_device, import_tensorrt
from flashocc_ros.config import ModelVariant
from flashocc_ros.geometry import PoolIndices


@dataclass(frozen=True)
class MachineIdentity:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def machine_identity(device: str = "cuda") -> MachineIdentity:
    import torch

    trt = import_tensorrt()
    dev = cuda_device(device)
    props = torch.cuda.get_device_properties(dev)
    return MachineIdentity(str(trt.__version__), str(props.name), f"{props.major}.{props.minor}")


# --------------------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------------------

# Optimization-profile "opt" sizes of the nuScenes rig (rows, cells, rows per cell) per depth-bin count.
NUSCENES_OPT_SHAPES = {44: (13918, 11932, 15), 88: (26596, 21988, 15)}


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    workspace_mib: int = 4096
    hardware_compatible: bool = False  # AMPERE_PLUS engines (portable across Ampere+ GPUs, slower)

    def profile(self, variant: ModelVariant) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """(min, opt, max) shape of every dynamic input; max admits any rig (each point its own row)."""
        rows, cells, j = NUSCENES_OPT_SHAPES.get(variant.depth_bins, NUSCENES_OPT_SHAPES[44])
        max_rows = depth_size(variant.depth_bins)
        rows, cells, j = min(rows, max_rows), min(cells, NUM_BEV_CELLS), min(j, MAX_ROWS_PER_CELL)
        table = ((1, SLOT_WIDTH), (rows, SLOT_WIDTH), (max_rows, SLOT_WIDTH))
        return {
            POOL_INPUTS[0]: table,
            POOL_INPUTS[1]: table,
            POOL_INPUTS[2]: ((1, 1), (cells, j), (NUM_BEV_CELLS, MAX_ROWS_PER_CELL)),
        }

    def canonical(self, variant: ModelVariant) -> str:
        return json.dumps(
            {
                "workspace_mib": self.workspace_mib,
                "hardware_compatible": self.hardware_compatible,
                "profile": {k: [list(s) for s in v] for k, v in sorted(self.profile(variant).items())},
            },
            sort_keys=True,
            separators=(",", ":"),
        )


def engine_key(
    identity: MachineIdentity,
    onnx_path: str | Path,
    variant: ModelVariant,
    options: BuildOptions,
    calibration_sha256: str = "",
) -> EngineKey:
    return EngineKey(
        tensorrt_version=identity.tensorrt_version,
        gpu_name=identity.gpu_name,
        compute_capability=identity.compute_capability,
        precision=options.precision,
        onnx_sha256=file_sha256(onnx_path),
        calibration_sha256=calibration_sha256 if options.precision == "int8" else "",
        build_options=options.canonical(variant),
    )


def build_engine_bytes(
    onnx_path: str | Path,
    variant: ModelVariant,
    options: BuildOptions,
    calibrator=None,
    log: Callable[[str], None] = print,
) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine (fixed image shape, dynamic pooling-table shapes)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: always explicit batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)
    if options.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if options.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    profile = builder.create_optimization_profile()
    shapes = options.profile(variant)
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name in shapes:
            profile.set_shape(name, *shapes[name])
    config.add_optimization_profile(profile)
    if options.precision == "int8":
        if calibrator is None:
            raise BackendError("precision int8 needs calibration data (--calib-images DIR or --calib-bag BAG)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator  # implicit quantization: deprecated since TensorRT 10.1, still supported
        config.set_calibration_profile(profile)
    log(f"building TensorRT {trt.__version__} {options.precision} engine from {onnx_path} (this takes minutes)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT messages above)")
    return bytes(serialized)


def _build_key(onnx_path, variant: ModelVariant, options: BuildOptions, device: str, calibration) -> EngineKey:
    """The build's cache key; int8 without calibration data fails first, before the GPU is queried."""
    calib_hash = ""
    if options.precision == "int8":
        if calibration is None:
            raise BackendError("precision int8 needs calibration data (--calib-images DIR or --calib-bag BAG)")
        calib_hash = calibration.sha256()
    return engine_key(machine_identity(device), onnx_path, variant, options, calib_hash)


def _int8_calibrator(options: BuildOptions, calibration, variant: ModelVariant, cache_path: Path, device: str):
    """The entropy calibrator of an int8 build (its cache at ``cache_path``); None for fp32 / fp16."""
    if options.precision != "int8":
        return None
    from flashocc_ros.backends.calibration import EntropyCalibrator

    return EntropyCalibrator(calibration, variant, cache_path, device)


def ensure_engine(
    onnx_path: str | Path,
    variant: ModelVariant,
    options: BuildOptions,
    cache_dir: str | Path,
    device: str = "cuda",
    calibration=None,
    log: Callable[[str], None] = print,
) -> tuple[Path, EngineKey]:
    """Cached engine for (this machine, ONNX file, precision, calibration, options), built when missing/stale.

    ``calibration`` (int8 only) is a ``calibration.CalibrationSource``; its content hash is part of the key.
    """
    key = _build_key(onnx_path, variant, options, device, calibration)
    cache = EngineCache(cache_dir)
    stem = f"{variant.name}-{Path(onnx_path).stem}"
    hit = cache.lookup(stem, key)
    if hit is not None:
        log(f"using cached TensorRT engine {hit}")
        return hit, key
    calib_cache = cache.root / f"{stem}-{key.calibration_sha256[:16]}.calib"
    calibrator = _int8_calibrator(options, calibration, variant, calib_cache, device)
    data = build_engine_bytes(onnx_path, variant, options, calibrator, log)
    path = cache.store(stem, key, data)
    log(f"stored TensorRT engine {path}")
    return path, key


def build_engine_file(
    onnx_path: str | Path,
    variant: ModelVariant,
    options: BuildOptions,
    out_path: str | Path,
    device: str = "cuda",
    calibration=None,
    log: Callable[[str], None] = print,
) -> tuple[Path, EngineKey]:
    """Build into an explicit file (with its metadata sidecar) instead of the cache."""
    key = _build_key(onnx_path, variant, options, device, calibration)
    calibrator = _int8_calibrator(options, calibration, variant, Path(str(out_path) + ".calib"), device)
    data = build_engine_bytes(onnx_path, variant, options, calibrator, log)
    return write_engine(out_path, data, key), key


# --------------------------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------------------------


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
            from flashocc_ros.backends.onnx_export import input_names

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
