"""Deployment backends: one ``Runner`` interface, three implementations, chosen by ``model.backend``.

* ``pytorch``      - eager PyTorch (CPU / CUDA), the reference;
* ``onnxruntime``  - ONNX Runtime on the exported standard-op ONNX graph (CPU; CUDA/TensorRT EPs when present);
* ``tensorrt``     - TensorRT 10 engine built from that ONNX, cached per machine (``engine_cache``);
* ``auto``         - on a CUDA device: TensorRT when ``tensorrt`` imports, else ONNX Runtime with a GPU provider, else
                     PyTorch; on the CPU: ONNX Runtime, else PyTorch. ``model.device: auto`` (default) is ``cuda``
                     when PyTorch sees a GPU (for ONNX Runtime: and onnxruntime-gpu is installed).

``create_runner(cfg)`` resolves the backend, loads the weights (``model.checkpoint`` or the deterministic
untrained weights), exports/caches the ONNX file and builds/caches the engine as needed. No ROS imports.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from flashocc_ros.backends.base import (
    CENTER_HEATMAP,
    CENTER_HEIGHT,
    CENTER_OUTPUTS,
    CENTER_REG,
    IMAGE_INPUT,
    IMAGE_SHAPE,
    MLP_INPUT,
    OCC_LABELS,
    OCC_LOGITS,
    BackendError,
    Runner,
    TensorSpec,
    output_specs,
)
from flashocc_ros.config import ConfigError, FlashOccConfig, ModelConfig, get_variant

__all__ = [
    "CENTER_HEATMAP",
    "CENTER_HEIGHT",
    "CENTER_OUTPUTS",
    "CENTER_REG",
    "IMAGE_INPUT",
    "IMAGE_SHAPE",
    "MLP_INPUT",
    "OCC_LABELS",
    "OCC_LOGITS",
    "BackendError",
    "Runner",
    "TensorSpec",
    "available_backends",
    "create_runner",
    "ensure_onnx",
    "load_weights",
    "onnxruntime_gpu_available",
    "output_specs",
    "resolve_backend",
    "resolve_device",
]

DETERMINISTIC_SEED = 0
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def tensorrt_available() -> tuple[bool, str]:
    """(usable, reason) for the TensorRT backend on this machine (imports tensorrt only if torch sees a GPU)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU visible to PyTorch"
        from flashocc_ros.backends.tensorrt_env import import_tensorrt

        import_tensorrt()
    except BackendError as exc:
        return False, str(exc)
    except Exception as exc:  # a broken driver/library install must not break backend selection
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


def onnxruntime_available() -> tuple[bool, str]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return False, f"onnxruntime not importable ({exc})"
    return True, ""


def onnxruntime_gpu_available() -> bool:
    """Whether the installed onnxruntime has a CUDA or TensorRT execution provider (onnxruntime-gpu)."""
    try:
        import onnxruntime
    except ImportError:
        return False
    return bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(onnxruntime.get_available_providers()))


def available_backends() -> dict[str, str]:
    """backend -> "" if usable, else the reason it is not."""
    trt_ok, trt_why = tensorrt_available()
    ort_ok, ort_why = onnxruntime_available()
    return {"tensorrt": "" if trt_ok else trt_why, "onnxruntime": "" if ort_ok else ort_why, "pytorch": ""}


def resolve_device(model_cfg: ModelConfig, backend: str | None = None) -> str:
    """The concrete device for ``model.device``: ``auto`` is ``cuda`` when PyTorch sees a CUDA GPU (and, for the
    onnxruntime backend, the installed onnxruntime has a GPU provider), else ``cpu``."""
    if model_cfg.device != "auto":
        return model_cfg.device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if backend == "onnxruntime" and not onnxruntime_gpu_available():
        return "cpu"
    return "cuda"


def resolve_backend(model_cfg: ModelConfig) -> str:
    """The concrete backend for ``model.backend`` (``auto``: TensorRT > ONNX Runtime > PyTorch on a CUDA device,
    ONNX Runtime > PyTorch on the CPU)."""
    wanted = model_cfg.backend
    on_gpu = resolve_device(model_cfg).startswith("cuda")
    if wanted == "auto":
        if model_cfg.precision == "int8":
            if not on_gpu:
                raise ConfigError(
                    f"model.precision: int8 needs the tensorrt backend on a CUDA GPU, but model.device is "
                    f"{model_cfg.device!r} (resolves to cpu); use fp32 on the CPU"
                )
            return "tensorrt"
        if on_gpu:  # TensorRT, else ONNX Runtime on the GPU, else PyTorch on the GPU (faster than any CPU backend)
            if tensorrt_available()[0]:
                return "tensorrt"
            return "onnxruntime" if onnxruntime_gpu_available() else "pytorch"
        return "onnxruntime" if onnxruntime_available()[0] else "pytorch"
    if wanted not in ("tensorrt", "onnxruntime", "pytorch"):
        raise ConfigError(f"model.backend: {wanted!r} is not one of auto, tensorrt, onnxruntime, pytorch")
    if wanted == "tensorrt" and model_cfg.device == "cpu":
        raise ConfigError("model.backend: tensorrt runs on a CUDA GPU, but model.device is 'cpu' (use cuda or auto)")
    if wanted != "tensorrt" and model_cfg.precision == "int8":
        raise ConfigError(
            f"model.precision: int8 is only supported by the tensorrt backend (model.backend is {wanted!r})"
        )
    return wanted


def load_weights(model_cfg: ModelConfig) -> tuple[dict, str]:
    """(state_dict, weights id = SHA-256 prefix of the tensors): ``model.checkpoint`` if set, else the
    deterministic untrained weights (seed 0)."""
    variant = get_variant(model_cfg.variant)
    if model_cfg.checkpoint:
        path = Path(os.path.expanduser(model_cfg.checkpoint))
        if not path.is_file():
            raise FileNotFoundError(f"model.checkpoint: file not found: {path}")
    else:
        path = None
    from flashocc_ros.loading import load_state_dict

    state_dict, name = load_state_dict(variant.name, path, DETERMINISTIC_SEED)
    if get_variant(name).name != variant.name:
        raise ConfigError(f"model.checkpoint: {path} holds variant {name!r}, model.variant is {variant.name!r}")
    from flashocc_ros.backends.onnx_export import weights_digest

    return state_dict, weights_digest(state_dict)[:16]


def _cache_root(model_cfg: ModelConfig) -> Path:
    return Path(os.path.expanduser(model_cfg.engine_cache_dir))


def ensure_onnx(
    model_cfg: ModelConfig,
    with_logits: bool = False,
    state_dict: dict | None = None,
    weights_id: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """The ONNX file to run: ``model.engine`` if it is an .onnx file, else an export cached under
    ``<engine_cache_dir>/onnx/<variant>-<weights id>[-logits].onnx`` (exported once)."""
    from flashocc_ros.backends.onnx_export import EXPORT_FORMAT, export_onnx

    variant = get_variant(model_cfg.variant)
    if model_cfg.engine and model_cfg.engine.endswith(".onnx"):
        path = Path(os.path.expanduser(model_cfg.engine))
        if not path.is_file():
            raise FileNotFoundError(f"model.engine: ONNX file not found: {path}")
        return path
    if state_dict is None or weights_id is None:
        state_dict, weights_id = load_weights(model_cfg)
    fmt = hashlib.sha256(EXPORT_FORMAT.encode()).hexdigest()[:6]
    name = f"{variant.name}-{weights_id}-{fmt}{'-logits' if with_logits else ''}.onnx"
    path = _cache_root(model_cfg) / "onnx" / name
    if not path.is_file():
        log(f"exporting {variant.name} to {path} (once; about a minute on CPU)")
        export_onnx(variant, state_dict, path, with_logits=with_logits)
    return path


def create_runner(
    cfg: FlashOccConfig | ModelConfig,
    with_logits: bool = False,
    log: Callable[[str], None] = print,
) -> Runner:
    """Runner for the configured variant/backend/device/precision (see the module docstring)."""
    model_cfg = cfg.model if isinstance(cfg, FlashOccConfig) else cfg
    model_cfg.validate()
    variant = get_variant(model_cfg.variant)
    backend = resolve_backend(model_cfg)
    device = resolve_device(model_cfg, backend)
    if backend == "pytorch":
        from flashocc_ros.backends.torch_runner import TorchRunner

        state_dict, _ = load_weights(model_cfg)
        return TorchRunner(variant, state_dict, device, with_logits, model_cfg.precision)
    if backend == "onnxruntime":
        from flashocc_ros.backends.ort_runner import OnnxRuntimeRunner

        onnx_path = ensure_onnx(model_cfg, with_logits, log=log)
        return OnnxRuntimeRunner(
            variant,
            onnx_path,
            device,
            with_logits,
            model_cfg.precision,
            trt_cache_dir=str(_cache_root(model_cfg) / "ort-trt"),
        )
    from flashocc_ros.backends.tensorrt_runner import BuildOptions, TensorRTRunner, ensure_engine, machine_identity

    ident = machine_identity(device)  # fails fast (no tensorrt / no GPU) before any export or build
    engine = model_cfg.engine
    if engine and engine.endswith(ENGINE_SUFFIXES):
        # An explicit engine: refuse it unless its metadata matches this machine and precision.
        from flashocc_ros.backends.engine_cache import read_engine_key

        path = Path(os.path.expanduser(engine))
        have = read_engine_key(path)
        wanted = type(have)(
            tensorrt_version=ident.tensorrt_version,
            gpu_name=ident.gpu_name,
            compute_capability=ident.compute_capability,
            precision=model_cfg.precision,
            onnx_sha256=have.onnx_sha256,  # the ONNX it was built from is not needed at run time
            calibration_sha256=have.calibration_sha256 if model_cfg.precision == "int8" else "",
            build_options=have.build_options,
        )
        return TensorRTRunner(variant, path, device, with_logits, expected_key=wanted)
    if model_cfg.precision == "int8":
        raise ConfigError(
            "model.precision: int8 engines are built ahead of time with calibration data "
            "(flashocc-export engine --precision int8 --calib-images DIR); set model.engine to the result"
        )
    onnx_path = ensure_onnx(model_cfg, with_logits, log=log)
    path, key = ensure_engine(
        onnx_path, variant, BuildOptions(precision=model_cfg.precision), _cache_root(model_cfg), device, log=log
    )
    return TensorRTRunner(variant, path, device, with_logits, expected_key=key)
