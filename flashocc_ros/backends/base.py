"""The runner interface shared by the PyTorch, ONNX Runtime and TensorRT backends, and the graph interface (tensor
names, shapes, ``EXPORT_FORMAT``) that the exported ONNX file and the engines built from it follow.

A runner owns preallocated buffers: one image input ``(6, 3, 256, 704) float32`` that callers fill in place, and
one array per output that every ``infer()`` overwrites. Rig-dependent inputs (pooling tables, BEVDepth
``mlp_input``) are set once per calibration with ``prepare()``. Nothing is allocated per frame by the runner itself.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from flashocc_ros.backends.pooling import POOL_INPUTS
from flashocc_ros.config import IMAGE_AUG, NUM_CLASSES, OCC_GRID, ModelVariant
from flashocc_ros.network.geometry import NUM_CAMERAS, PoolIndices

# Network tensor names (ONNX graph, TensorRT engine and runner buffers all use these).
IMAGE_INPUT = "img"
MLP_INPUT = "mlp_input"
OCC_LABELS = "occ_labels"  # (1, 200, 200, 16) int32, [ix, iy, iz], argmax over classes
OCC_LOGITS = "occ_logits"  # (1, 200, 200, 16, 18) float32
CENTER_HEATMAP = "center_heatmap"  # (1, 10, 200, 200) raw logits, [cls, iy, ix]
CENTER_REG = "center_reg"  # (1, 2, 200, 200)
CENTER_HEIGHT = "center_height"  # (1, 1, 200, 200)
CENTER_OUTPUTS = (CENTER_HEATMAP, CENTER_REG, CENTER_HEIGHT)

IMAGE_SHAPE = (NUM_CAMERAS, 3, *IMAGE_AUG.input_hw)
NUM_HEAD_CLASSES = 10
EXPORT_FORMAT = "flashocc_ros/onnx-v1"  # the graph interface below; bump when graph inputs/outputs change


class BackendError(RuntimeError):
    """A backend cannot be used here (missing package, no GPU, incompatible engine); the message says why."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


def output_specs(variant: ModelVariant, with_logits: bool = False) -> list[TensorSpec]:
    """Outputs of every backend for ``variant`` (labels always; logits on request; center maps for PT/PF)."""
    gx, gy, gz = OCC_GRID.shape
    specs = [TensorSpec(OCC_LABELS, (1, gx, gy, gz), np.dtype(np.int32))]
    if with_logits:
        specs.append(TensorSpec(OCC_LOGITS, (1, gx, gy, gz, NUM_CLASSES), np.dtype(np.float32)))
    if variant.panoptic:
        for name, ch in zip(CENTER_OUTPUTS, (NUM_HEAD_CLASSES, 2, 1)):
            specs.append(TensorSpec(name, (1, ch, gy, gx), np.dtype(np.float32)))
    return specs


def input_names(variant: ModelVariant) -> list[str]:
    """Graph inputs of ``variant`` (ONNX file, TensorRT engine): image, pooling tables, BEVDepth ``mlp_input``."""
    names = [IMAGE_INPUT, *POOL_INPUTS]
    if variant.depth_net == "bevdepth":
        names.append(MLP_INPUT)
    return names


def output_names(variant: ModelVariant, with_logits: bool = False) -> list[str]:
    return [s.name for s in output_specs(variant, with_logits)]


class Runner(ABC):
    """Load once, ``prepare()`` per calibration, ``infer()`` per frame, ``release()`` at the end.

    ``image`` is the preallocated network input; ``outputs`` the preallocated results (valid until the next
    ``infer``). ``last_infer_ms`` is the wall time of the last ``infer`` call (including host<->device copies).
    """

    backend: str = "base"

    def __init__(self, variant: ModelVariant, with_logits: bool = False) -> None:
        self.variant = variant
        self.with_logits = with_logits
        self.image = np.zeros(IMAGE_SHAPE, dtype=np.float32)
        self.outputs: dict[str, np.ndarray] = {
            s.name: np.zeros(s.shape, s.dtype) for s in output_specs(variant, with_logits)
        }
        self.last_infer_ms = float("nan")
        self._prepared = False
        self._released = False

    # -- lifecycle --------------------------------------------------------------------------------------------
    def prepare(self, pool: PoolIndices, mlp_input: np.ndarray | None = None) -> None:
        """Set the rig-dependent inputs (call again whenever the calibration changes)."""
        if self.variant.depth_net == "bevdepth":
            if mlp_input is None:
                raise ValueError(f"{self.variant.name} needs mlp_input (1, 6, 27); got None")
            mlp_input = np.ascontiguousarray(_numpy(mlp_input), dtype=np.float32).reshape(1, NUM_CAMERAS, 27)
        else:
            mlp_input = None
        self._prepare(pool, mlp_input)
        self._prepared = True

    def infer(self, image: np.ndarray | None = None) -> Mapping[str, np.ndarray]:
        """Run the network on ``image`` (copied into the input buffer) or on the buffer as filled by the caller."""
        if self._released:
            raise BackendError(f"{self.backend} runner was released")
        if not self._prepared:
            raise BackendError(f"{self.backend} runner: call prepare(pool, mlp_input) before infer()")
        if image is not None and image is not self.image:
            if tuple(image.shape) != IMAGE_SHAPE:
                raise ValueError(f"image: expected shape {IMAGE_SHAPE}, got {tuple(image.shape)}")
            np.copyto(self.image, image, casting="same_kind")
        t0 = time.perf_counter()
        self._infer()
        self.last_infer_ms = (time.perf_counter() - t0) * 1e3
        return self.outputs

    def release(self) -> None:
        if not self._released:
            self._release()
            self._released = True

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def describe(self) -> str:
        return f"{self.backend} ({self.variant.short})"

    # -- implementation hooks -----------------------------------------------------------------------------------
    @abstractmethod
    def _prepare(self, pool: PoolIndices, mlp_input: np.ndarray | None) -> None: ...

    @abstractmethod
    def _infer(self) -> None: ...

    def _release(self) -> None:  # noqa: B027 - optional hook
        pass


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
