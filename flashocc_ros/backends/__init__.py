"""Deployment backends: one ``Runner`` interface, three implementations, chosen by ``model.backend``.

* ``pytorch``      - eager PyTorch (CPU / CUDA), the reference;
* ``onnxruntime``  - ONNX Runtime on the exported standard-op ONNX graph (CPU; CUDA/TensorRT EPs when present);
* ``tensorrt``     - TensorRT 10 engine built from that ONNX, cached per machine (``engine_cache``);
* ``auto``         - on a CUDA device: TensorRT when ``tensorrt`` imports, else ONNX Runtime with a GPU provider, else
                     PyTorch; on the CPU: ONNX Runtime, else PyTorch. ``model.device: auto`` (default) is ``cuda``
                     when PyTorch sees a GPU (for ONNX Runtime: and onnxruntime-gpu is installed).

``create_runner(cfg)`` takes three steps: the choice of backend and device (``resolve_backend``,
``resolve_device``), the artefact its runner loads (``artefact_loader``: a chain of ``loaders`` - weights, ONNX
file, engine - each cached by its key under ``model.engine_cache_dir``), and the runner around it
(``make_runner``). Runners only run (``torch_runner``, ``ort_runner``, ``tensorrt_runner``); engines are built by
``tensorrt_build``; INT8 calibration is ``calibration``. No ROS imports.
"""

from __future__ import annotations

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
from flashocc_ros.backends.loaders import (
    CachedEngine,
    EngineFile,
    LoadWeights,
    OnnxFile,
    Weights,
    engine_cache_root,
    is_engine_file,
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
    "artefact_loader",
    "available_backends",
    "create_runner",
    "ensure_onnx",
    "load_weights",
    "make_runner",
    "onnxruntime_gpu_available",
    "output_specs",
    "resolve_backend",
    "resolve_device",
]


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


# -- compatibility wrappers of the loaders (tools and tests call these) --------------------------------------------
def load_weights(model_cfg: ModelConfig) -> tuple[dict, str]:
    """(state_dict, weights id = SHA-256 prefix of the tensors): ``model.checkpoint`` if set, else the
    deterministic untrained weights (seed 0)."""
    weights = LoadWeights(model_cfg)()
    return weights.state_dict, weights.id


def ensure_onnx(
    model_cfg: ModelConfig,
    with_logits: bool = False,
    state_dict: dict | None = None,
    weights_id: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """The ONNX file to run (``loaders.OnnxFile``), exported from ``state_dict`` when given with its id."""
    given = None if state_dict is None or weights_id is None else Weights(state_dict, weights_id)
    return OnnxFile(model_cfg, (lambda: given) if given else None, with_logits, log)()


# -- create_runner: choice, artefact, runner ---------------------------------------------------------------------
def artefact_loader(
    model_cfg: ModelConfig, backend: str, device: str, with_logits: bool = False, log: Callable[[str], None] = print
) -> Callable[[], object]:
    """The loader chain whose artefact ``backend``'s runner loads (nothing is loaded or built until it is called):
    pytorch: the weights; onnxruntime: the ONNX file (exported from the weights); tensorrt: the engine, either
    ``model.engine`` or one built from the ONNX file into the engine cache."""
    weights = LoadWeights(model_cfg)
    if backend == "pytorch":
        return weights
    onnx = OnnxFile(model_cfg, weights, with_logits, log)
    if backend == "onnxruntime":
        return onnx
    if is_engine_file(model_cfg.engine):
        return EngineFile(model_cfg.engine, model_cfg.precision, device)
    if model_cfg.precision == "int8":
        raise ConfigError(
            "model.precision: int8 engines are built ahead of time with calibration data "
            "(flashocc-export engine --precision int8 --calib-images DIR); set model.engine to the result"
        )
    from flashocc_ros.backends.tensorrt_build import BuildOptions

    variant = get_variant(model_cfg.variant)
    options = BuildOptions(precision=model_cfg.precision)
    return CachedEngine(onnx, variant, options, engine_cache_root(model_cfg), device, log=log)


def make_runner(backend: str, model_cfg: ModelConfig, artefact, device: str, with_logits: bool = False) -> Runner:
    """``backend``'s runner around the artefact of ``artefact_loader`` (weights, ONNX file or engine)."""
    variant = get_variant(model_cfg.variant)
    if backend == "pytorch":
        from flashocc_ros.backends.torch_runner import TorchRunner

        return TorchRunner(variant, artefact.state_dict, device, with_logits, model_cfg.precision)
    if backend == "onnxruntime":
        from flashocc_ros.backends.ort_runner import OnnxRuntimeRunner

        trt_cache = str(engine_cache_root(model_cfg) / "ort-trt")
        return OnnxRuntimeRunner(variant, artefact, device, with_logits, model_cfg.precision, trt_cache_dir=trt_cache)
    from flashocc_ros.backends.tensorrt_runner import TensorRTRunner

    return TensorRTRunner(variant, artefact.path, device, with_logits, expected_key=artefact.key)


def create_runner(
    cfg: FlashOccConfig | ModelConfig,
    with_logits: bool = False,
    log: Callable[[str], None] = print,
) -> Runner:
    """Runner for the configured variant/backend/device/precision, in three steps:

    1. choice: the backend and device (``resolve_backend``, ``resolve_device``); TensorRT must be usable here;
    2. artefact: the loader chain of that backend builds or finds what it loads (``artefact_loader``);
    3. runner: the backend's runner around that artefact (``make_runner``).
    """
    model_cfg = cfg.model if isinstance(cfg, FlashOccConfig) else cfg
    model_cfg.validate()
    backend = resolve_backend(model_cfg)
    device = resolve_device(model_cfg, backend)
    if backend == "tensorrt":
        from flashocc_ros.backends.tensorrt_build import machine_identity

        machine_identity(device)  # fails fast (no tensorrt / no GPU) before any export or build
    artefact = artefact_loader(model_cfg, backend, device, with_logits, log)()
    return make_runner(backend, model_cfg, artefact, device, with_logits)
