"""TensorRT and its CUDA device: import the `tensorrt` package (version checked) and pick the torch CUDA device, with
a BackendError that says what is missing. Shared by the runner and the INT8 calibrator (neither imports the other).
"""

from __future__ import annotations

from flashocc_ros.backends.base import BackendError

MIN_TENSORRT_MAJOR = 10


def import_tensorrt():
    """The tensorrt module, or BackendError explaining what is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(
            "TensorRT backend: the Python package `tensorrt` is not installed (pip install tensorrt; it needs an "
            "NVIDIA GPU and driver). Use model.backend: onnxruntime or pytorch, or backend: auto."
        ) from exc
    except OSError as exc:  # shared libraries of the wheel could not be loaded
        raise BackendError(f"TensorRT backend: `import tensorrt` failed to load its libraries: {exc}") from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise BackendError(
            f"TensorRT {trt.__version__} is too old: this package uses the TensorRT {MIN_TENSORRT_MAJOR}.x name-based "
            "tensor API (execute_async_v3)"
        )
    return trt


def cuda_device(device: str = "cuda"):
    """torch.device for TensorRT, or BackendError when no usable CUDA GPU is visible."""
    import torch

    if not torch.cuda.is_available():
        raise BackendError(
            "TensorRT backend: no CUDA GPU is visible (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}). TensorRT needs an NVIDIA GPU, and this "
            "package allocates its device buffers with a CUDA build of PyTorch."
        )
    dev = torch.device(device if str(device).startswith("cuda") else "cuda")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise BackendError(f"TensorRT backend: device {device!r} requested, {torch.cuda.device_count()} GPU(s) present")
    return torch.device("cuda", index)
