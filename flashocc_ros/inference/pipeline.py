"""Images + calibration -> semantic (and panoptic) occupancy, on any backend. No ROS imports.

``OccupancyPipeline(cfg)`` creates the configured runner (``backends.create_runner``), keeps the voxel-pooling
indices per calibration (recomputed only when the calibration changes; a small LRU keeps recent rigs), and runs
decode -> preprocess -> network -> postprocess (labels; for PT/PF center decoding and panoptic assignment with
``cfg.model.pano_mode``), reporting the time of each step in milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flashocc_ros.backends import (
    CENTER_HEATMAP,
    CENTER_HEIGHT,
    CENTER_OUTPUTS,
    CENTER_REG,
    OCC_LABELS,
    OCC_LOGITS,
    Runner,
)
from flashocc_ros.config import CAMERA_NAMES, IMAGE_AUG, FlashOccConfig
from flashocc_ros.network.geometry import PoolIndexCache, RigCalibration

TIMING_KEYS = ("decode", "preprocess", "inference", "postprocess")


class PipelineError(ValueError):
    """Bad pipeline input (wrong number/shape of images, no calibration); the message names the problem."""


@dataclass
class OccupancyResult:
    semantic: np.ndarray  # (200, 200, 16) uint8 [ix, iy, iz]
    panoptic: np.ndarray | None = None  # (200, 200, 16) int32 (ids >= 18 are instances) for PT/PF
    instances: Any = None  # panoptic.InstanceTable for PT/PF
    centers: Any = None  # centers.Centers for PT/PF
    timings_ms: dict[str, float] = field(default_factory=dict)
    logits: np.ndarray | None = None  # (200, 200, 16, 18) float32, only when the pipeline keeps logits
    # PT/PF with logits kept: the raw centre-head maps {center_heatmap (10,200,200), center_reg (2,200,200),
    # center_height (1,200,200)}, [channel, iy, ix], float32 (copies)
    center_maps: dict[str, np.ndarray] | None = None


def postprocess_device(runner: Runner):
    """Where centre decoding and panoptic assignment run: the runner's CUDA device when it has one and PyTorch can
    use it (the same device as the network), else the CPU."""
    import torch

    device = torch.device(str(getattr(runner, "device", "cpu")))
    if device.type == "cuda" and torch.cuda.is_available():
        return device
    return torch.device("cpu")


# -- decode + preprocess (shared by OccupancyPipeline and temporal.TemporalPipeline) ---------------------------------
def check_six(items, name: str) -> list:
    items = list(items)
    if len(items) != len(CAMERA_NAMES):
        names = ", ".join(CAMERA_NAMES)
        raise PipelineError(f"{name}: expected {len(CAMERA_NAMES)} images ({names}), got {len(items)}")
    return items


def check_image_size(i: int, hw, image_hw) -> None:
    """Image ``i`` of (H, W) ``hw`` must have the calibration's source size ``image_hw``."""
    want = tuple(int(x) for x in image_hw)
    if tuple(int(x) for x in hw) != want:
        raise PipelineError(
            f"images[{i}] ({CAMERA_NAMES[i]}): size {hw[1]}x{hw[0]} differs from the calibration's "
            f"{want[1]}x{want[0]} (intrinsics are for the source image size)"
        )


def images_into(batch, images, out: np.ndarray, image_hw) -> dict[str, float]:
    """Six RGB uint8 HxWx3 images of size ``image_hw`` (exact official preprocessing, on ``batch``, a
    preprocess.BatchPreprocessor), or an already preprocessed 4-d float32 array of ``out``'s shape, into ``out``;
    returns the decode / preprocess times (ms)."""
    from flashocc_ros.network.preprocess import BatchItemError

    t0 = time.perf_counter()
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype == np.float32:
        if images.shape != out.shape:
            raise PipelineError(f"images: preprocessed array must be {out.shape}, got {images.shape}")
        np.copyto(out, images)
        return {"decode": 0.0, "preprocess": (time.perf_counter() - t0) * 1e3}
    images = check_six(images, "images")
    for i, img in enumerate(images):
        img = images[i] = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise PipelineError(
                f"images[{i}] ({CAMERA_NAMES[i]}): expected RGB uint8 HxWx3, got {img.dtype} {img.shape}"
            )
        check_image_size(i, img.shape[:2], image_hw)
    try:
        times = batch.images_into(images, out)
    except BatchItemError as exc:
        i = exc.index
        raise PipelineError(f"images[{i}] ({CAMERA_NAMES[i]}): {exc.error}") from exc.error
    return {"decode": 0.0, "preprocess": times["decode"] + times["preprocess"]}


def jpeg_headers(jpegs: Sequence[bytes]) -> tuple[list, list[tuple[int, int]]]:
    """Six JPEG byte strings and the (H, W) their headers give."""
    from flashocc_ros.network.preprocess import jpeg_size

    jpegs = check_six(jpegs, "jpegs")
    sizes = []
    for i, data in enumerate(jpegs):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise PipelineError(f"jpegs[{i}] ({CAMERA_NAMES[i]}): expected bytes, got {type(data).__name__}")
        try:
            sizes.append(jpeg_size(bytes(data)))
        except (ValueError, OSError, RuntimeError) as exc:
            raise PipelineError(f"jpegs[{i}] ({CAMERA_NAMES[i]}): cannot decode JPEG ({exc})") from exc
    return jpegs, sizes


def check_image_sizes(sizes, image_hw) -> None:
    """Every image's (H, W) in ``sizes`` must be the calibration's source size ``image_hw``."""
    for i, hw in enumerate(sizes):
        check_image_size(i, hw, image_hw)


def check_jpegs(jpegs: Sequence[bytes], image_hw) -> list:
    """Six JPEG byte strings whose headers give the calibration's source size ``image_hw``."""
    jpegs, sizes = jpeg_headers(jpegs)
    check_image_sizes(sizes, image_hw)
    return jpegs


def jpegs_into(batch, jpegs, out: np.ndarray, exact: bool = False) -> dict[str, float]:
    """Six checked JPEGs (``check_jpegs``) decoded + preprocessed into ``out`` on ``batch``: fast path (DCT-scaled
    decode + OpenCV) or ``exact`` (Pillow decode + the official resize/crop/normalise); decode / preprocess ms."""
    return wait_for_jpegs(batch.start_jpegs(jpegs, out, exact=exact))


def wait_for_jpegs(pending) -> dict[str, float]:
    """``pending.wait()`` of a ``BatchPreprocessor.start_jpegs`` batch, a failing image named as a PipelineError."""
    from flashocc_ros.network.preprocess import BatchItemError

    try:
        return pending.wait()
    except BatchItemError as exc:
        i = exc.index
        raise PipelineError(f"jpegs[{i}] ({CAMERA_NAMES[i]}): cannot decode JPEG ({exc.error})") from exc.error


class OccupancyPipeline:
    def __init__(
        self,
        cfg: FlashOccConfig,
        runner: Runner | None = None,
        with_logits: bool = False,
        log=print,
        preprocess_workers: int | None = None,
        gpu_jpeg: bool | None = None,
    ):
        """``preprocess_workers``: threads that decode/preprocess the six images in parallel (1 = sequential, 0 =
        one per image up to the CPU cores; None = ``cfg.model.preprocess_threads``).
        ``gpu_jpeg``: fast-path JPEGs decoded and preprocessed on the runner's GPU (``gpu_preprocess``) straight
        into its device input; None (default) = whenever the runner has a CUDA input tensor (``device_image``) and
        torchvision can decode there; True = required (PipelineError if impossible); False = never."""
        from flashocc_ros.backends import create_runner
        from flashocc_ros.network.preprocess import BatchPreprocessor

        self.cfg = cfg.validate()
        threads = cfg.model.preprocess_threads if preprocess_workers is None else preprocess_workers
        self._batch = BatchPreprocessor(threads)
        self.variant = cfg.variant
        if self.variant.temporal:
            raise PipelineError(
                f"{self.variant.name} is a temporal variant ({self.variant.num_frames} frames): use "
                "flashocc_ros.inference.temporal.TemporalPipeline"
            )
        self.runner = runner if runner is not None else create_runner(cfg, with_logits=with_logits, log=log)
        if self.runner.variant.name != self.variant.name:
            raise PipelineError(f"runner is for {self.runner.variant.name}, config wants {self.variant.name}")
        self.backend_name = self.runner.backend
        self.postprocess_device = postprocess_device(self.runner)
        self.gpu_jpeg, self.gpu_jpeg_reason = self._gpu_jpeg_choice(gpu_jpeg)
        self.last_jpeg_path = ""  # "gpu" or "cpu": where the last run_jpeg decoded/preprocessed
        self._geometry = PoolIndexCache(max_entries=4)
        self._fingerprint: str | None = None
        self.calibration: RigCalibration | None = None

    # -- calibration ----------------------------------------------------------------------------------------
    def set_calibration(self, calib: RigCalibration) -> bool:
        """Use ``calib`` from now on; returns True when it differs from the current one (indices recomputed or
        taken from the per-calibration cache), False when unchanged (nothing done)."""
        if not isinstance(calib, RigCalibration):
            raise PipelineError(f"calibration: expected a RigCalibration, got {type(calib).__name__}")
        fingerprint = calib.fingerprint()
        if fingerprint == self._fingerprint:
            return False
        geo = self._geometry.get(self.variant.name, calib)
        mlp = None if geo.mlp_input is None else geo.mlp_input.numpy()
        self.runner.prepare(geo.pool, mlp)
        self._fingerprint = fingerprint
        self.calibration = calib
        return True

    @property
    def pool_index_computations(self) -> int:
        """How many times pooling indices were computed (cache misses)."""
        return self._geometry.misses

    # -- inference ------------------------------------------------------------------------------------------
    def run(self, images) -> OccupancyResult:
        """``images``: six RGB uint8 HxWx3 arrays in CAMERA_NAMES order (exact official preprocessing), or an
        already preprocessed (6, 3, 256, 704) float32 array."""
        return self._infer_and_postprocess(self.load_images(images))

    def run_jpeg(
        self, jpegs: Sequence[bytes], exact: bool = False, calibrate: Callable[[], object] | None = None
    ) -> OccupancyResult:
        """Six JPEG images (CAMERA_NAMES order). Fast path (default): DCT-scaled decode (``decode``) + OpenCV
        resize/crop/normalise (``preprocess``). ``exact=True``: Pillow decode (``decode``) + the official
        resize/crop/normalise (``preprocess``), bit-identical to ``run`` on the decoded images. The six images are
        processed in parallel (``preprocess_workers``) straight into the network's input buffer.

        ``calibrate``: the frame's calibration step (e.g. ``lambda: pipe.set_calibration(calib)``), run on this
        thread while the worker threads decode, so that a moving vehicle's per-frame pooling indices cost no wall
        time beyond the decode where cores allow; the JPEG sizes are checked against the calibration in force
        after it. Its exception is raised once the decode has finished (the input buffer is never left being
        written)."""
        return self._infer_and_postprocess(self.load_jpegs(jpegs, exact, calibrate))

    def load_images(self, images) -> dict[str, float]:
        """Preprocess ``images`` (see ``run``) into the runner's input buffer; returns decode/preprocess times."""
        self._require_calibration()
        return images_into(self._batch, images, self.runner.image, self._image_hw())

    def load_jpegs(
        self, jpegs: Sequence[bytes], exact: bool = False, calibrate: Callable[[], object] | None = None
    ) -> dict[str, float]:
        """Decode + preprocess six JPEGs (see ``run_jpeg``, also for ``calibrate``) into the runner's input
        buffer, in parallel on ``preprocess_workers`` threads; returns the decode / preprocess times (wall time of
        the six, split in proportion to the per-image stage times)."""
        if calibrate is None:
            self._require_calibration()
        jpegs, sizes = jpeg_headers(jpegs)
        gpu = self.gpu_jpeg and not exact
        if calibrate is None or gpu:  # nothing to overlap (on the GPU path the decode is not on these cores)
            if calibrate is not None:
                calibrate()
            self._check_sizes(sizes)
            if gpu:
                return self._load_jpegs_gpu(jpegs)
            self.last_jpeg_path = "cpu"
            return jpegs_into(self._batch, jpegs, self.runner.image, exact=exact)
        self.last_jpeg_path = "cpu"
        pending = self._batch.start_jpegs(jpegs, self.runner.image, exact=exact)
        try:
            calibrate()
        except BaseException:
            try:
                pending.wait()  # let the workers finish writing the input buffer; the calibration error wins
            except Exception:  # a decode error of this frame is secondary to the calibration error
                pass
            raise
        times = wait_for_jpegs(pending)
        self._check_sizes(sizes)
        return times

    def _check_sizes(self, sizes) -> None:
        self._require_calibration()
        check_image_sizes(sizes, self._image_hw())

    # -- GPU host path ---------------------------------------------------------------------------------------
    def _gpu_jpeg_choice(self, wanted: bool | None) -> tuple[bool, str]:
        if wanted is False:
            return False, "disabled"
        from flashocc_ros.network.gpu_preprocess import gpu_path_status, torchvision_decoder

        target = getattr(self.runner, "device_image", None)
        if target is None:
            ok, why = False, f"the {self.backend_name} runner has no device input tensor"
        else:
            ok, why = gpu_path_status(target.device)
            if ok:
                ok, why = torchvision_decoder()
        if wanted and not ok:
            raise PipelineError(f"gpu_jpeg: the GPU JPEG path cannot be used: {why}")
        return ok, why

    def _load_jpegs_gpu(self, jpegs) -> dict[str, float]:
        """Decode (nvJPEG) + preprocess on the GPU into the runner's device input; the host buffer is skipped."""
        from flashocc_ros.network.gpu_preprocess import jpegs_into
        from flashocc_ros.network.preprocess import BatchItemError

        try:
            times = jpegs_into([bytes(d) for d in jpegs], self.runner.device_image)
        except BatchItemError as exc:
            i = exc.index
            raise PipelineError(f"jpegs[{i}] ({CAMERA_NAMES[i]}): cannot decode JPEG on the GPU ({exc})") from exc
        except ValueError as exc:
            raise PipelineError(f"jpegs: cannot decode JPEG on the GPU ({exc})") from exc
        self.runner.input_on_device = True
        self.last_jpeg_path = "gpu"
        return {"decode": times["decode"], "preprocess": times["preprocess"]}

    def _infer_and_postprocess(self, timings: dict[str, float]) -> OccupancyResult:
        out = self.runner.infer()
        timings["inference"] = self.runner.last_infer_ms
        t0 = time.perf_counter()
        semantic = out[OCC_LABELS][0].astype(np.uint8)
        result = OccupancyResult(semantic=semantic, timings_ms=timings)
        if OCC_LOGITS in out:
            result.logits = out[OCC_LOGITS][0].copy()
            if self.variant.panoptic:
                result.center_maps = {name: out[name][0].copy() for name in CENTER_OUTPUTS}
        if self.variant.panoptic:
            self._panoptic(out, result)
        timings["postprocess"] = (time.perf_counter() - t0) * 1e3
        return result

    def _panoptic(self, out, result: OccupancyResult) -> None:
        import torch

        from flashocc_ros.network.centers import decode_centers
        from flashocc_ros.network.panoptic import assign_instances

        device = self.postprocess_device
        # The runner's device tensors of this frame (TorchRunner on CUDA) spare the host -> device round trip.
        on_dev = getattr(self.runner, "device_outputs", None) or {}

        def on_device(name: str, array: np.ndarray):
            t = on_dev.get(name)
            if t is not None and t.device == device:
                return t
            return torch.from_numpy(array).to(device)  # no copy on the CPU

        centers = decode_centers(
            on_device(CENTER_HEATMAP, out[CENTER_HEATMAP]),
            on_device(CENTER_REG, out[CENTER_REG]),
            on_device(CENTER_HEIGHT, out[CENTER_HEIGHT]),
            score_threshold=self.cfg.model.score_threshold,
        )
        labels = on_dev.get(OCC_LABELS)  # the runner's device labels, else the uint8 host grid (no copy on the CPU)
        if labels is not None and labels.device == device:
            semantic = labels[0].to(torch.uint8)
        else:
            semantic = torch.from_numpy(result.semantic).to(device)
        pano = assign_instances(semantic, centers, mode=self.cfg.model.pano_mode)
        result.centers = centers
        result.panoptic = pano.panoptic.cpu().numpy().astype(np.int32, copy=False)
        result.instances = pano.instances

    # -- helpers --------------------------------------------------------------------------------------------
    def _require_calibration(self) -> None:
        if self._fingerprint is None:
            raise PipelineError("no calibration: call set_calibration(RigCalibration) before run()")

    def _image_hw(self) -> tuple[int, int]:
        return tuple(self.calibration.image_hw) if self.calibration is not None else IMAGE_AUG.source_hw

    def close(self) -> None:
        self._batch.close()
        self.runner.release()

    def __enter__(self) -> OccupancyPipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
