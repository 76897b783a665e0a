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
scale >= the resized size, 800x450 for nuScenes), then an OpenCV bilinear resize to the official resized size and
the same crop/normalisation. Not bit-identical to the exact path; its deviation is measured in docs/model.md.
Implemented with less work and the same values as that formulation (``finish_reduced``): BGR decode into a reused
per-thread buffer, resize of only the rows the crop keeps (``_resize_band``), normalisation by table lookup.

``BatchPreprocessor`` runs either path for the six cameras on a small persistent thread pool (the decoders and
resamplers release the GIL), writing straight into the network's input buffer; results equal the sequential ones.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from flashocc_ros.config import CAMERA_NAMES, IMAGE_AUG

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


def decode_jpeg_reduced(jpeg: bytes, bgr: bool = False, buffer: np.ndarray | None = None):
    """Fast-path decode: libjpeg-turbo DCT-domain downscale to the smallest scale >= the official resized size
    (800x450 for 1600x900). Returns the decoded image (RGB, or BGR with ``bgr=True``; into ``buffer`` when given
    and large enough, simplejpeg only) and the augmentation of the JPEG's source size."""
    aug = augmentation_for(jpeg_size(jpeg))
    new_w, new_h = aug.resized_wh
    if not simplejpeg_available():
        rgb = _decode_reduced_pillow(jpeg, new_w, new_h)
        return (np.ascontiguousarray(rgb[..., ::-1]) if bgr else rgb), aug
    import simplejpeg

    colorspace = "BGR" if bgr else "RGB"
    if buffer is not None:
        try:
            image = simplejpeg.decode_jpeg(
                jpeg, colorspace=colorspace, min_width=new_w, min_height=new_h, buffer=buffer
            )
            return image, aug
        except ValueError as exc:
            if "buffer" not in str(exc).lower():
                raise  # a bad JPEG, not a small buffer
    return simplejpeg.decode_jpeg(jpeg, colorspace=colorspace, min_width=new_w, min_height=new_h), aug


def _decode_reduced_pillow(jpeg: bytes, min_w: int, min_h: int) -> np.ndarray:
    """Pillow fallback of the fast decode: ``draft`` picks the largest DCT scale keeping >= (min_w, min_h)."""
    import io

    with Image.open(io.BytesIO(jpeg)) as im:
        im.draft("RGB", (min_w, min_h))
        return np.asarray(im.convert("RGB"))


def finish_reduced(small: np.ndarray, aug: ImageAugmentation, out: np.ndarray | None = None) -> np.ndarray:
    """Fast-path rest: OpenCV bilinear resize to the official resized size, crop, normalise (into ``out``).

    ``small`` is the decoded RGB image; the result equals ``_finish_reduced_bgr`` on its BGR copy (tested)."""
    import cv2

    new_w, new_h = aug.resized_wh
    if small.shape[1] != new_w or small.shape[0] != new_h:
        small = cv2.resize(small, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    left, top, right, bottom = aug.crop
    return normalize(small[top:bottom, left:right], out)


@functools.cache
def _normalize_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel uint8 -> float32 tables of ``normalize`` (B, G, R): every possible value put through the same
    float32 subtract and divide, so a table lookup is bit-identical to ``normalize``."""
    levels = np.arange(256, dtype=np.uint8)
    table = normalize(np.stack([levels] * 3, axis=-1)[None])  # (3, 1, 256), B, G, R
    return tuple(np.ascontiguousarray(table[c, 0]) for c in range(3))


@functools.cache
def _resize_band(decoded_hw: tuple[int, int], source_hw: tuple[int, int]) -> tuple[int, int, int] | None:
    """Rows ``(first, last, skip)`` of the decoded image whose resize gives exactly the crop's rows: resizing rows
    ``first:last`` to ``(last - first) * new_h / h`` rows and dropping ``skip`` rows equals the crop of the full
    resize, bit for bit (OpenCV's bilinear resize maps output row ``y`` to source ``(y + 0.5) * h / new_h - 0.5``;
    the band starts on a row where that map restarts: ``first = p*m``, output ``q*m`` with ``h / new_h = p / q``).
    None when no smaller band exists or when a one-time check on a random image finds the band differs (then
    the whole image is resized)."""
    import math

    import cv2

    h, w = decoded_hw
    aug = augmentation_for(source_hw)
    new_w, new_h = aug.resized_wh
    left, top, right, bottom = aug.crop
    g = math.gcd(h, new_h)
    p, q = h // g, new_h // g
    m = top // q
    k = -(-bottom // q) - m  # ceil(bottom / q) - m output blocks of q rows
    first, last = p * m, p * (m + k)
    if m == 0 or last > h:
        return None
    rng = np.random.default_rng(0)
    probe = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    full = cv2.resize(probe, (new_w, new_h), interpolation=cv2.INTER_LINEAR)[top:bottom]
    band = cv2.resize(probe[first:last], (new_w, q * k), interpolation=cv2.INTER_LINEAR)[top - q * m :][: bottom - top]
    if not np.array_equal(full, band):
        return None
    return first, last, top - q * m


class _Scratch(threading.local):
    """Per-thread reusable buffers of the fast path (decoded image, resized band, channel planes)."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        buf = self.buffers.get(name)
        if buf is None or buf.shape != shape:
            buf = self.buffers[name] = np.empty(shape, dtype=np.uint8)
        return buf


_SCRATCH = _Scratch()


def _decode_buffer(aug: ImageAugmentation) -> np.ndarray:
    """This thread's buffer for the DCT-scaled decode of a source of ``aug.source_hw``: libjpeg-turbo scales by
    M/8, the smallest scale keeping >= the resized size, so each side is < resized + source/8 + 1."""
    (h, w), (new_w, new_h) = aug.source_hw, aug.resized_wh
    return _SCRATCH.get("decoded", ((new_h + h // 8 + 2) * (new_w + w // 8 + 2) * 3,))


def _finish_reduced_bgr(bgr: np.ndarray, aug: ImageAugmentation, out: np.ndarray) -> np.ndarray:
    """``finish_reduced`` for a decoded BGR image, with less work and the same result: only the rows that survive
    the crop are resized (``_resize_band``), and each channel plane is normalised by a table lookup
    (``_normalize_tables``) straight into ``out``."""
    import cv2

    new_w, new_h = aug.resized_wh
    left, top, right, bottom = aug.crop
    h, w = bgr.shape[:2]
    band = _resize_band((h, w), aug.source_hw) if (h, w) != (new_h, new_w) else None
    if band is not None:
        first, last, skip = band
        rows = (last - first) * new_h // h
        resized = _SCRATCH.get("band", (rows, new_w, 3))
        cv2.resize(bgr[first:last], (new_w, rows), dst=resized, interpolation=cv2.INTER_LINEAR)
        crop = resized[skip : skip + bottom - top, left:right]
    else:
        if (h, w) != (new_h, new_w):
            bgr = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        crop = bgr[top:bottom, left:right]
    tables = _normalize_tables()
    plane = _SCRATCH.get("plane", crop.shape[:2])
    # cv2 writes into dst= only when it fits exactly (else it returns a new array): a C-contiguous float32 target
    direct = out.dtype == np.float32 and out.shape == (3, *crop.shape[:2]) and out.flags.c_contiguous
    target = out if direct else np.empty((3, *crop.shape[:2]), dtype=np.float32)
    for c in range(3):
        cv2.extractChannel(crop, c, dst=plane)
        cv2.LUT(plane, tables[c], dst=target[c])
    if not direct:
        out[...] = target
    return out


def preprocess_jpeg(jpeg: bytes, out: np.ndarray | None = None) -> np.ndarray:
    """Fast path: JPEG bytes -> (3, 256, 704) float32 via DCT-scaled decode + OpenCV linear resize.

    Uses the source size from the JPEG header for the crop rule, so post_rot/post_tran are those of
    ``augmentation_for(jpeg_size(jpeg))`` exactly as for the exact path. Decodes to BGR into a per-thread buffer,
    resizes only the rows the crop keeps and normalises by table lookup: the same values as ``finish_reduced`` on
    the RGB decode (tested), ~0.5 ms less CPU per image.
    """
    if out is None:
        out = np.empty((3, INPUT_H, INPUT_W), dtype=np.float32)
    buffer = _decode_buffer(augmentation_for(jpeg_size(jpeg)))
    bgr, aug = decode_jpeg_reduced(jpeg, bgr=True, buffer=buffer)
    return _finish_reduced_bgr(bgr, aug, out)


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
        aug = augmentation_for(jpeg_size(data))
        bgr, aug = decode_jpeg_reduced(data, bgr=True, buffer=_decode_buffer(aug))
        t1 = time.perf_counter()
        _finish_reduced_bgr(bgr, aug, out)
    return t1 - t0, time.perf_counter() - t1


def _image_item(rgb: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    t0 = time.perf_counter()
    preprocess_image(rgb, out)
    return 0.0, time.perf_counter() - t0


def auto_workers() -> int:
    """Threads for the six images when none are configured: one per image, at most one per CPU core this process
    may run on (its affinity mask; a container's CPU quota is not visible here, set the count then)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(len(CAMERA_NAMES), cores))


class PendingBatch:
    """A batch handed to ``BatchPreprocessor``'s threads (``start_jpegs``); ``wait()`` returns its times."""

    def __init__(self, t0: float, items: list) -> None:
        self._t0 = t0
        self._items = items  # futures, or results when the batch ran inline

    def wait(self) -> dict[str, float]:
        """Block until every image is done; ``{"decode", "preprocess"}`` ms: the batch's wall time (start to the
        last image's end, not to this call) split in proportion to the summed per-image stage times. Raises
        ``BatchItemError`` for the lowest failing index."""
        results = [item.result() if hasattr(item, "result") else item for item in self._items]
        wall = max((end for _, end in results), default=self._t0) - self._t0
        errors = [r for r, _ in results if isinstance(r, BatchItemError)]
        if errors:
            raise errors[0]
        decode = sum(r[0] for r, _ in results)
        busy = decode + sum(r[1] for r, _ in results)
        decode_ms = wall * 1e3 * (decode / busy if busy > 0 else 0.0)
        return {"decode": decode_ms, "preprocess": wall * 1e3 - decode_ms}


class BatchPreprocessor:
    """Decode + preprocess a batch of camera images into a preallocated (K, 3, 256, 704) float32 buffer, one image
    per task on a small persistent thread pool.

    simplejpeg (libjpeg-turbo), OpenCV, Pillow's decoder/resampler and numpy's ufuncs release the GIL, so with
    2 workers six images take about half the sequential time on 2 cores; results are identical to the sequential
    functions (each task runs the same function on its own image and output slice). ``workers=1`` runs inline,
    ``workers=0`` (default) is ``auto_workers()``: more cores decode the six JPEGs in fewer rounds.
    """

    def __init__(self, workers: int = 0) -> None:
        if int(workers) < 0:
            raise ValueError(f"workers: expected >= 1, or 0 for auto, got {workers}")
        self.workers = int(workers) or auto_workers()
        self._pool = None
        self._lock = threading.Lock()

    def jpegs_into(self, jpegs, out: np.ndarray, exact: bool = False) -> dict[str, float]:
        """Fast path (default) or exact path for each JPEG into ``out[i]``; returns ``{"decode", "preprocess"}`` ms
        (wall time of the batch, split in proportion to the summed per-image decode and preprocess times).
        Raises ``BatchItemError`` for the lowest failing index."""
        return self.start_jpegs(jpegs, out, exact).wait()

    def start_jpegs(self, jpegs, out: np.ndarray, exact: bool = False) -> PendingBatch:
        """``jpegs_into`` handed to the worker threads without waiting: the caller does other work meanwhile and
        then calls ``wait()`` (the times and errors of ``jpegs_into``). With one worker it runs here and now."""
        return self._start([(_jpeg_item, (bytes(data), out[i], exact)) for i, data in enumerate(jpegs)])

    def images_into(self, images, out: np.ndarray) -> dict[str, float]:
        """Exact path (``preprocess_image``) for each RGB uint8 image into ``out[i]``."""
        return self._run([(_image_item, (img, out[i])) for i, img in enumerate(images)])

    def _run(self, tasks) -> dict[str, float]:
        return self._start(tasks).wait()

    def _start(self, tasks) -> PendingBatch:
        t0 = time.perf_counter()
        if self.workers == 1 or len(tasks) <= 1:
            return PendingBatch(t0, [self._call(i, fn, args) for i, (fn, args) in enumerate(tasks)])
        pool = self._executor()
        return PendingBatch(t0, [pool.submit(self._call, i, fn, args) for i, (fn, args) in enumerate(tasks)])

    @staticmethod
    def _call(index: int, fn, args):
        """(the task's (decode s, preprocess s) or its BatchItemError, the time it ended)."""
        try:
            return fn(*args), time.perf_counter()
        except (ValueError, OSError, RuntimeError) as exc:
            err = BatchItemError(index, exc)
            err.__cause__ = exc
            return err, time.perf_counter()

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
