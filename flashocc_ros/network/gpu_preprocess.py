"""GPU host path: six JPEGs -> the network's input tensor on the GPU, without a host round trip. No ROS imports.

``decode_jpegs`` decodes with ``torchvision.io.decode_jpeg`` (nvJPEG when ``device`` is CUDA, libjpeg on the CPU);
``preprocess_tensor`` applies the official test-time augmentation (``preprocess.augmentation_for``) to a decoded
(3, H, W) uint8 tensor: antialiased bicubic resize (``torch.nn.functional.interpolate(..., antialias=True)``, the
same filter family as Pillow's BICUBIC resize of the exact path), rounding to 8-bit levels as Pillow does, crop of
the bottom 256 rows, the official RGB->BGR swap and per-position normalisation, written into a (3, 256, 704)
float32 slice of the network input. ``jpegs_into`` does the six cameras.

Deviation from the exact official path (Pillow decode + Pillow bicubic resize), measured on the CPU with
Pillow-decoded input (``test/network/test_gpu_preprocess.py``): within 1 8-bit level for > 99 % of values, at most a few
levels (resampler rounding); nvJPEG's IDCT adds decoder differences on top (``scripts/gpu_check.sh`` measures the
whole GPU path against the exact path in its ``decode`` section).

Everything here runs on CPU tensors too (that is how it is tested without a GPU); ``gpu_path_status`` says whether
the GPU path can be used on a device (CUDA visible, torchvision with ``decode_jpeg`` on that device).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from flashocc_ros.config import IMAGE_AUG
from flashocc_ros.network.preprocess import INPUT_H, INPUT_W, BatchItemError, augmentation_for

# Max |GPU-path preprocessing - exact path| on the CPU with identical decoded pixels, in normalised units:
# 8-bit levels / std (std ~ 57): Pillow's fixed-point resampler vs torch's float resampler round differently.
LEVEL = 1.0 / min(IMAGE_AUG.std)


def gpu_path_status(device) -> tuple[bool, str]:
    """(usable, reason): JPEG decode + preprocessing on ``device`` with torch/torchvision."""
    try:
        import torch
    except ImportError as exc:
        return False, f"torch not importable ({exc})"
    dev = torch.device(device)
    if dev.type != "cuda":
        return False, f"device {dev} is not a CUDA device"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to PyTorch"
    return torchvision_decoder()


def torchvision_decoder() -> tuple[bool, str]:
    """(available, reason): ``torchvision.io.decode_jpeg`` importable."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception as exc:  # missing, or built for another torch
        return False, f"torchvision.io.decode_jpeg not importable ({type(exc).__name__}: {exc})"
    return True, ""


def decode_jpegs(jpegs: Sequence[bytes], device="cpu") -> tuple[list, str]:
    """Decode JPEG bytes to RGB (3, H, W) uint8 tensors on ``device``; returns (tensors, decoder name).

    torchvision's ``decode_jpeg`` (one batched call; nvJPEG on CUDA) when importable, else Pillow on the host
    (then uploaded). Raises ``preprocess.BatchItemError`` (a ValueError) naming the first undecodable image."""
    import torch

    ok, _ = torchvision_decoder()
    if not ok:
        from flashocc_ros.network.preprocess import decode_jpeg as pil_decode

        out = []
        for i, j in enumerate(jpegs):
            try:
                rgb = pil_decode(bytes(j))
            except (OSError, ValueError) as exc:
                raise BatchItemError(i, ValueError(f"cannot decode JPEG ({exc})")) from exc
            out.append(torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).to(device))
        return out, "pillow"
    from torchvision.io import ImageReadMode, decode_jpeg

    name = "torchvision-nvjpeg" if torch.device(device).type == "cuda" else "torchvision-libjpeg"
    data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device)), name
    except RuntimeError:
        pass
    out = []  # find the culprit one by one
    for i, d in enumerate(data):
        try:
            out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
        except RuntimeError as exc:
            raise BatchItemError(i, ValueError(f"cannot decode JPEG ({exc})")) from exc
    return out, name


_CONSTANTS: dict = {}


def _mean_std(device):
    import torch

    key = str(device)
    if key not in _CONSTANTS:
        mean = torch.tensor(IMAGE_AUG.mean, dtype=torch.float32, device=device).view(3, 1, 1)
        std = torch.tensor(IMAGE_AUG.std, dtype=torch.float32, device=device).view(3, 1, 1)
        _CONSTANTS[key] = (mean, std)
    return _CONSTANTS[key]


def preprocess_tensor(rgb, out=None):
    """(3, H, W) uint8 RGB tensor -> (3, 256, 704) float32 network input (B, G, R order) on the same device,
    written into ``out`` when given. Same resize/crop rule as the exact path; see the module docstring."""
    import torch
    import torch.nn.functional as F

    if rgb.dtype != torch.uint8 or rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"image: expected an RGB uint8 (3, H, W) tensor, got {rgb.dtype} {tuple(rgb.shape)}")
    aug = augmentation_for((int(rgb.shape[1]), int(rgb.shape[2])))
    new_w, new_h = aug.resized_wh
    left, top, right, bottom = aug.crop
    x = rgb[None].float()
    if (new_h, new_w) != tuple(rgb.shape[1:]):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255)  # Pillow resamples 8-bit images to 8-bit levels
    bgr = x[0, :, top:bottom, left:right].flip(0)
    mean, std = _mean_std(bgr.device)
    if out is None:
        out = torch.empty((3, INPUT_H, INPUT_W), dtype=torch.float32, device=bgr.device)
    torch.sub(bgr, mean, out=out)
    out.div_(std)
    return out


def jpegs_into(jpegs: Sequence[bytes], out) -> dict[str, float]:
    """Decode + preprocess the JPEGs into ``out`` ((K, 3, 256, 704) float32 tensor, on its device); returns
    ``{"decode", "preprocess"}`` wall times in ms (device-synchronised on CUDA) and ``"decoder"``
    (see ``decode_jpegs``)."""
    import torch

    if out.ndim != 4 or out.shape[0] != len(jpegs) or tuple(out.shape[1:]) != (3, INPUT_H, INPUT_W):
        raise ValueError(f"out: expected ({len(jpegs)}, 3, {INPUT_H}, {INPUT_W}), got {tuple(out.shape)}")
    cuda = out.device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(out.device)

    t0 = time.perf_counter()
    images, decoder = decode_jpegs(jpegs, out.device)
    sync()
    t1 = time.perf_counter()
    for i, img in enumerate(images):
        preprocess_tensor(img, out[i])
    sync()
    return {"decode": (t1 - t0) * 1e3, "preprocess": (time.perf_counter() - t1) * 1e3, "decoder": decoder}


def deviation_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Deviation of two network inputs in 8-bit levels (|a - b| x std), as in docs/model.md's fast-path figures:
    mean, p99, max and the share of values off by more than 2 levels."""
    std = np.asarray(IMAGE_AUG.std, dtype=np.float64)[:, None, None]
    levels = np.abs(a.astype(np.float64) - b.astype(np.float64)) * std
    return {
        "mean_levels": float(levels.mean()),
        "p99_levels": float(np.percentile(levels, 99)),
        "max_levels": float(levels.max()),
        "share_gt_2_levels": float((levels > 2.0 + 1e-3).mean()),
    }
