"""TorchRunner's float32 on CUDA is IEEE float32 (no TF32), checked on the process-wide switches it sets; the
forward itself on a GPU is checked by scripts/gpu_check.sh (parity section) where a GPU is lent."""

from __future__ import annotations

import pytest
import torch

from flashocc_ros.backends.torch_runner import ieee_fp32


def switches() -> tuple[str, str]:
    return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision


def test_torch_lets_cudnn_use_tf32_by_default():
    """The reason for ieee_fp32: PyTorch's default for float32 convolutions on CUDA is TF32."""
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"


def test_ieee_fp32_sets_and_restores_the_switches_on_cuda_only():
    before = switches()
    with ieee_fp32(torch.device("cuda:0")):
        assert switches() == ("ieee", "ieee")
    assert switches() == before
    assert torch.backends.cudnn.allow_tf32 is True  # restored consistently: the legacy switch reads again
    with ieee_fp32(torch.device("cpu")):
        assert switches() == before
    with ieee_fp32(torch.device("cuda"), enabled=False):  # an fp16 autocast forward keeps the defaults
        assert switches() == before
    with pytest.raises(RuntimeError, match="forward failed"):
        with ieee_fp32(torch.device("cuda")):
            raise RuntimeError("forward failed")
    assert switches() == before
