"""TensorRT 10 engine building: the exported ONNX file -> a serialized engine (fp32 / fp16 / int8), keyed and cached.

``ensure_engine`` finds or builds the engine for (this machine, ONNX file, precision, calibration, build options)
in an ``engine_cache.EngineCache``; ``build_engine_file`` builds into an explicit file. Both store the
``EngineKey`` beside the engine. INT8 builds feed the calibrator (``calibration.EntropyCalibrator``) the network
inputs of ``calibration.calibration_feeds``. ``tensorrt`` is imported lazily, only when an engine is built or the
machine is identified. Nothing here runs an engine (``tensorrt_runner``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flashocc_ros.backends.base import BackendError
from flashocc_ros.backends.engine_cache import EngineCache, EngineKey, file_sha256, write_engine
from flashocc_ros.backends.pooling import MAX_ROWS_PER_CELL, NUM_BEV_CELLS, POOL_INPUTS, SLOT_WIDTH, depth_size
from flashocc_ros.backends.tensorrt_env import cuda_device, import_tensorrt
from flashocc_ros.config import ModelVariant


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

    @property
    def tf32(self) -> bool:
        """TF32 allowed in float32 layers: not for fp32 engines (IEEE float32, the parity precision; TensorRT
        enables TF32 by default), kept (TensorRT's default) for fp16 / int8 engines, whose float32 layers are few."""
        return self.precision != "fp32"

    def canonical(self, variant: ModelVariant) -> str:
        return json.dumps(
            {
                "workspace_mib": self.workspace_mib,
                "tf32": self.tf32,
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
    if not options.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
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


def _build(onnx_path, variant: ModelVariant, options: BuildOptions, device: str, calibration, calib_cache: Path,
           log: Callable[[str], None]) -> bytes:  # fmt: skip
    """Serialized engine; an int8 build calibrates on ``calibration``'s feeds (its cache at ``calib_cache``)."""
    calibrator = None
    if options.precision == "int8":
        from flashocc_ros.backends.calibration import EntropyCalibrator, calibration_feeds

        calibrator = EntropyCalibrator(calibration_feeds(calibration, variant), calib_cache, device)
    return build_engine_bytes(onnx_path, variant, options, calibrator, log)


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
    path = cache.store(stem, key, _build(onnx_path, variant, options, device, calibration, calib_cache, log))
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
    data = _build(onnx_path, variant, options, device, calibration, Path(str(out_path) + ".calib"), log)
    return write_engine(out_path, data, key), key
