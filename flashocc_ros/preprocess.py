"""Camera image -> network input (3, 256, 704) float32, as the official test-time PrepareImageInputs (SPEC 2).

Exact path (``preprocess_image``): Pillow BICUBIC resize by 704 / W, crop the bottom 256 rows (centred 704
columns), then the official normalisation: the RGB array goes through a BGR->RGB swap, so the network sees
**B, G, R** channels, each normalised with the RGB-ordered ImageNet mean/std of its position. Bit-identical to the
official pipeline (the golden reference was made with the same Pillow resampler).

Rule for any source size (H, W): ``resize = 704 / W``; resized size ``(int(W*resize), int(H*resize))``; crop box
``(left, top) = (int(max(0, newW - 704) / 2), newH - 256)``; post_rot = diag(resize, resize, 1),
post_tran = (-left, -top, 0); the intrinsics stay those of the source image. Sources whose resized height is below
256 rows would need padding, which the official pipeline never does for nuScenes: they are rejected.

Fast path (``preprocess_jpeg``): libjpeg-turbo DCT-domain downscale while decoding (simplejpeg, to the smallest
scale >= the resized size, 800x450 for nuScenes), decode only as needed, then an OpenCV resize to the official
resized size and the same crop/normalisation. Not bit-identical; its deviation is measured in docs/model.md.

``BatchPreprocessor`` runs either path for the six cameras on a small persistent thread pool (the decoders and
resamplers release the GIL), writing straight into the network's input buffer; results equal the sequential ones.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from flashocc_ros.config import IMAGE_AUG

INPUT_H, INPUT_W = IMAGE_AUG.input_hw
# Per-position constants of the official normalisation (mean/std in RGB order applied to B, G, R), float32.
_MEAN = np.array(IMAGE_AUG.mean, dtype=np.float32)[:, None, None]
_STD = np.array(IMAGE_AUG.std, dtype=np.float32)[:, None, None]


@dataclass(frozen=True)
class ImageAugmentation:
    """Test-time resize/crop of one source size and its effect on pixel coordinates.

    ``[u_aug, v_aug] = post_rot[:2, :2] @ [u_src, v_src] + post_tran[:2]``.
    """

    source_hw: tuple[int, int]
    resize: float
    resized_wh: tuple[int, int]
    crop: tuple[int, int, int, int]  # PIL box (left, top, right, bottom) in the resized image
    post_rot: np.ndarray  # (3, 3) float32
    post_tran: np.ndarray  # (3,) float32


def augmentation_for(source_hw: tuple[int, int]) -> ImageAugmentation:
    """Official test-time augmentation for a source image of (H, W) pixels (see the module docstring)."""
    h, w = int(source_hw[0]), int(source_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"source image size {source_hw} is not positive")
    resize = float(INPUT_W) / float(w)
    new_w, new_h = int(w * resize), int(h * resize)
    top = int((1 - 0.0) * new_h) - INPUT_H
    left = int(max(0, new_w - INPUT_W) / 2)
    if top < 0 or new_w < INPUT_W:
        raise ValueError(
            f"source image {w}x{h} resizes to {new_w}x{new_h}, smaller than the {INPUT_W}x{INPUT_H} network input "
            f"(aspect ratio H/W must be >= {INPUT_H / INPUT_W:.4f})"
        )
    post_rot = np.eye(3, dtype=np.float32)
    post_rot[:2, :2] *= np.float32(resize)
    post_tran = np.zeros(3, dtype=np.float32)
    post_tran[:2] -= np.array([left, top], dtype=np.float32)
    return ImageAugmentation(
        source_hw=(h, w),
        resize=resize,
        resized_wh=(new_w, new_h),
        crop=(left, top, left + INPUT_W, top + INPUT_H),
        post_rot=post_rot,
        post_tran=post_tran,
    )


def _check_rgb(rgb: np.ndarray, name: str = "image") -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"{name}: expected an RGB uint8 HxWx3 array, got {rgb.dtype} {rgb.shape}")
    return rgb


def resize_crop(rgb: np.ndarray) -> np.ndarray:
    """Official Pillow resize (BICUBIC) + crop -> (256, 704, 3) uint8 RGB."""
    rgb = _check_rgb(rgb)
    aug = augmentation_for(rgb.shape[:2])
    img = Image.fromarray(rgb).resize(aug.resized_wh, Image.Resampling.BICUBIC).crop(aug.crop)
    return np.asarray(img)


def normalize(rgb_crop: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(256, 704, 3) uint8 RGB -> (3, 256, 704) float32 network input in B, G, R order.

    float32 ``(x - mean) / std`` per channel position; bit-identical to the golden reference (multiplying by a
    float64 reciprocal instead differs in the last ulp for ~20 % of the values).
    """
    bgr = rgb_crop[..., ::-1].transpose(2, 0, 1)
    if out is None:
        out = np.empty(bgr.shape, dtype=np.float32)
    np.subtract(bgr, _MEAN, out=out, dtype=np.float32)
    np.divide(out, _STD, out=out)
    return out


def preprocess_image(rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 HxWx3 camera image -> (3, 256, 704) float32, bit-exact official path (written into ``out`` if
    given)."""
    return normalize(resize_crop(rgb), out)


def preprocess_images(images) -> np.ndarray:
    """Six RGB images (camera order) -> (6, 3, 256, 704) float32 (exact path)."""
    out = np.empty((len(images), 3, INPUT_H, INPUT_W), dtype=np.float32)
    for i, img in enumerate(images):
        preprocess_image(_check_rgb(img, f"image {i}"), out[i])
    return out


def decode_jpeg(jpeg: bytes) -> np.ndarray:
    """Full-resolution RGB decode with Pillow (the decoder of the official pipeline)."""
    import io

    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB"))


@functools.cache
def simplejpeg_available() -> bool:
    """simplejpeg (libjpeg-turbo with DCT scaling) importable; without it the fast path decodes with Pillow's
    ``draft`` (also a DCT-domain downscale, other IDCT/upsampling details: results differ slightly)."""
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        return False
    return True


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """(H, W) of a JPEG without decoding it (simplejpeg, else Pillow's header parser)."""
    if not simplejpeg_available():
        import io

        with Image.open(io.BytesIO(jpeg)) as im:
            if im.format != "JPEG":
                raise ValueError(f"not a JPEG image ({im.format})")
            return int(im.size[1]), int(im.size[0])
    import simplejpeg

    h, w, _, _ = simplejpeg.decode_jpeg_header(jpeg)  # simplejpeg returns (height, width, colorspace, subsampling)
    return int(h), int(w)


def decode_jpeg_reduced(jpeg: bytes) -> tuple[np.ndarray, ImageAugmentation]:
    """Fast-path decode: libjpeg-turbo DCT-domain downscale to the smallest scale >= the official resized size
    (800x450 for 1600x900). Returns the decoded RGB image and the augmentation of the JPEG's source size."""
    aug = augmentation_for(jpeg_size(jpeg))
    new_w, new_h = aug.resized_wh
    if not simplejpeg_available():
        return _decode_reduced_pillow(jpeg, new_w, new_h), aug
    import simplejpeg

    return simplejpeg.decode_jpeg(jpeg, colorspace="RGB", min_width=new_w, min_height=new_h), aug


def _decode_reduced_pillow(jpeg: bytes, min_w: int, min_h: int) -> np.ndarray:
    """Pillow fallback of the fast decode: ``draft`` picks the largest DCT scale keeping >= (min_w, min_h)."""
    import io

    with Image.open(io.BytesIO(jpeg)) as im:
        im.draft("RGB", (min_w, min_h))
        return np.asarray(im.convert("RGB"))


def finish_reduced(small: np.ndarray, aug: ImageAugmentation, out: np.ndarray | None = None) -> np.ndarray:
    """Fast-path rest: OpenCV bilinear resize to the official resized size, crop, normalise (into ``out``)."""
    import cv2

    new_w, new_h = aug.resized_wh
    if small.shape[1] != new_w or small.shape[0] != new_h:
        small = cv2.resize(small, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    left, top, right, bottom = aug.crop
    return normalize(small[top:bottom, left:right], out)


def preprocess_jpeg(jpeg: bytes, out: np.ndarray | None = None) -> np.ndarray:
    """Fast path: JPEG bytes -> (3, 256, 704) float32 via DCT-scaled decode + OpenCV linear resize.

    Uses the source size from the JPEG header for the crop rule, so post_rot/post_tran are those of
    ``augmentation_for(jpeg_size(jpeg))`` exactly as for the exact path.
    """
    return finish_reduced(*decode_jpeg_reduced(jpeg), out)


def preprocess_jpeg_exact(jpeg: bytes, out: np.ndarray | None = None) -> np.ndarray:
    """Exact path from JPEG bytes (Pillow decode + official resize/crop/normalise)."""
    return preprocess_image(decode_jpeg(jpeg), out)


class BatchItemError(ValueError):
    """Image ``index`` of a batch could not be decoded/preprocessed; ``__cause__`` is the original error."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(f"image {index}: {error}")
        self.index = index
        self.error = error


def _jpeg_item(data: bytes, out: np.ndarray, exact: bool) -> tuple[float, float]:
    t0 = time.perf_counter()
    if exact:
        rgb = decode_jpeg(data)
        t1 = time.perf_counter()
        preprocess_image(rgb, out)
    else:
        small, aug = decode_jpeg_reduced(data)
        t1 = time.perf_counter()
        finish_reduced(small, aug, out)
    return t1 - t0, time.perf_counter() - t1


def _image_item(rgb: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    t0 = time.perf_counter()
    preprocess_image(rgb, out)
    return 0.0, time.perf_counter() - t0


class BatchPreprocessor:
    """Decode + preprocess a batch of camera images into a preallocated (K, 3, 256, 704) float32 buffer, one image
    per task on a small persistent thread pool.

    simplejpeg (libjpeg-turbo), OpenCV, Pillow's decoder/resampler and numpy's ufuncs release the GIL, so with
    2 workers six images take about half the sequential time on 2 cores; results are identical to the sequential
    functions (each task runs the same function on its own image and output slice). ``workers=1`` runs inline.
    """

    def __init__(self, workers: int = 2) -> None:
        if int(workers) < 1:
            raise ValueError(f"workers: expected >= 1, got {workers}")
        self.workers = int(workers)
        self._pool = None
        self._lock = threading.Lock()

    def jpegs_into(self, jpegs, out: np.ndarray, exact: bool = False) -> dict[str, float]:
        """Fast path (default) or exact path for each JPEG into ``out[i]``; returns ``{"decode", "preprocess"}`` ms
        (wall time of the batch, split in proportion to the summed per-image decode and preprocess times).
        Raises ``BatchItemError`` for the lowest failing index."""
        return self._run([(_jpeg_item, (bytes(data), out[i], exact)) for i, data in enumerate(jpegs)])

    def images_into(self, images, out: np.ndarray) -> dict[str, float]:
        """Exact path (``preprocess_image``) for each RGB uint8 image into ``out[i]``."""
        return self._run([(_image_item, (img, out[i])) for i, img in enumerate(images)])

    def _run(self, tasks) -> dict[str, float]:
        t0 = time.perf_counter()
        if self.workers == 1 or len(tasks) <= 1:
            results = [self._call(i, fn, args) for i, (fn, args) in enumerate(tasks)]
        else:
            pool = self._executor()
            futures = [pool.submit(self._call, i, fn, args) for i, (fn, args) in enumerate(tasks)]
            results = [f.result() for f in futures]  # waits for all, in order; a failure raises below
        wall = time.perf_counter() - t0
        errors = [r for r in results if isinstance(r, BatchItemError)]
        if errors:
            raise errors[0]
        decode = sum(r[0] for r in results)
        busy = decode + sum(r[1] for r in results)
        decode_ms = wall * 1e3 * (decode / busy if busy > 0 else 0.0)
        return {"decode": decode_ms, "preprocess": wall * 1e3 - decode_ms}

    @staticmethod
    def _call(index: int, fn, args):
        try:
            return fn(*args)
        except (ValueError, OSError, RuntimeError) as exc:
            err = BatchItemError(index, exc)
            err.__cause__ = exc
            return err

    def _executor(self):
        with self._lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="flashocc-preprocess")
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> BatchPreprocessor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
