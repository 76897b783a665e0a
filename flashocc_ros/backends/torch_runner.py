"""PyTorch eager runner (CPU or CUDA) around ``model.forward_tensors`` (the reference for the other backends)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch

from flashocc_ros.backends.base import (
    CENTER_HEATMAP,
    CENTER_HEIGHT,
    CENTER_REG,
    OCC_LABELS,
    OCC_LOGITS,
    BackendError,
    Runner,
)
from flashocc_ros.config import ModelVariant
from flashocc_ros.network.geometry import PoolIndices


def torch_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(
            f"model.device {device!r}: no CUDA GPU is visible to PyTorch {torch.__version__} "
            f"(CUDA build: {torch.version.cuda}); use model.device: cpu"
        )
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise BackendError(f"model.device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def _per_operator_precision() -> bool:
    """torch >= 2.9: per-operator ``fp32_precision`` settings (else only the boolean TF32 switches)."""
    return hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision")


def fp32_precision_settings() -> dict:
    """The process's current float32 precision settings of cuDNN convolutions and CUDA matrix products."""
    backends = torch.backends
    if _per_operator_precision():
        return {"cudnn_conv": backends.cudnn.conv.fp32_precision, "cuda_matmul": backends.cuda.matmul.fp32_precision}
    return {"cudnn_allow_tf32": backends.cudnn.allow_tf32, "matmul_allow_tf32": backends.cuda.matmul.allow_tf32}


@contextmanager
def ieee_fp32(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Float32 convolutions and matrix products in IEEE float32 on a CUDA ``device`` while inside, as on the CPU.

    PyTorch lets cuDNN run float32 convolutions in TF32 by default on Ampere and later GPUs (inputs rounded to a
    10-bit mantissa), which moves the logits by ~1e-3 relative: far outside the official-parity bound (1e-4 x std)
    and enough to flip labels that are not near-ties. ``model.precision: fp32`` means IEEE float32 here; fp16 is the
    fast choice. The process-wide flags are set for the forward and restored after it (kernels are chosen when
    launched). Nothing changes on the CPU or with ``enabled`` false (an fp16 autocast forward keeps the defaults).
    """
    if device.type != "cuda" or not enabled:
        yield
        return
    if _per_operator_precision():
        conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
        saved = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision, matmul.fp32_precision = "ieee", "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
    else:  # older torch: the boolean TF32 switches
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class TorchRunner(Runner):
    backend = "pytorch"

    def __init__(
        self,
        variant: ModelVariant,
        state_dict: Mapping[str, torch.Tensor],
        device: str = "cpu",
        with_logits: bool = False,
        precision: str = "fp32",
    ) -> None:
        super().__init__(variant, with_logits)
        from flashocc_ros.network.networks import build_model

        if precision == "int8":
            raise BackendError("model.precision int8 is only supported by the tensorrt backend")
        self.device = torch_device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise BackendError("model.precision fp16 with the pytorch backend needs model.device cuda")
        self.precision = precision
        self.model = build_model(variant.name, self.device)
        self.model.load_state_dict(state_dict, strict=True)
        self.model.eval()
        on_gpu = self.device.type == "cuda"
        # Host views of the preallocated numpy buffers (pinned on GPU for asynchronous copies).
        if on_gpu:
            self._host_img = torch.empty(self.image.shape, dtype=torch.float32, pin_memory=True)
            self.image = self._host_img.numpy()
            self._dev_img = torch.empty(self.image.shape, dtype=torch.float32, device=self.device)
            pinned = {
                k: torch.empty(v.shape, dtype=torch.from_numpy(v).dtype, pin_memory=True)
                for k, v in self.outputs.items()
            }
            self.outputs = {k: t.numpy() for k, t in pinned.items()}
            self._host_out = pinned
        else:
            self._host_img = torch.from_numpy(self.image)
            self._dev_img = self._host_img
            self._host_out = {k: torch.from_numpy(v) for k, v in self.outputs.items()}
        self._pool: PoolIndices | None = None
        self._mlp: torch.Tensor | None = None
        # GPU host path (pipeline.py): callers may fill ``device_image`` on the GPU themselves and set
        # ``input_on_device`` for the next infer() (then the host buffer is not copied); ``device_outputs`` holds the
        # last outputs as device tensors (labels int32, centre maps), so post-processing on the same device needs no
        # round trip. Both None on the CPU.
        self.device_image = self._dev_img if on_gpu else None
        self.input_on_device = False
        self.device_outputs: dict[str, torch.Tensor] | None = None

    def describe(self) -> str:
        return f"pytorch {self.device} {self.precision} ({self.variant.short})"

    def _prepare(self, pool: PoolIndices, mlp_input: np.ndarray | None) -> None:
        self._pool = pool.to(self.device)
        self._mlp = None if mlp_input is None else torch.from_numpy(mlp_input).to(self.device)

    @torch.inference_mode()
    def _infer(self) -> None:
        p = self._pool
        if self._dev_img is not self._host_img and not self.input_on_device:
            self._dev_img.copy_(self._host_img, non_blocking=True)
        self.input_on_device = False
        fp16 = self.precision == "fp16" and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.float16, enabled=fp16), ieee_fp32(self.device, not fp16):
            outs = self.model.forward_tensors(
                self._dev_img,
                p.ranks_depth,
                p.ranks_feat,
                p.ranks_bev,
                p.interval_starts,
                p.interval_lengths,
                self._mlp,
            )
        logits = outs[0].float()
        labels = logits.argmax(-1).to(torch.int32)
        self._host_out[OCC_LABELS].copy_(labels, non_blocking=True)
        if self.device.type == "cuda":
            self.device_outputs = {OCC_LABELS: labels}
        if OCC_LOGITS in self._host_out:
            self._host_out[OCC_LOGITS].copy_(logits, non_blocking=True)
        if self.variant.panoptic:
            heatmap, reg, height = outs[1:4]
            for name, t in ((CENTER_HEATMAP, heatmap), (CENTER_REG, reg), (CENTER_HEIGHT, height)):
                self._host_out[name].copy_(t.float(), non_blocking=True)
                if self.device_outputs is not None:
                    self.device_outputs[name] = t.float()
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def _release(self) -> None:
        self.model = None
        self._pool = None
