"""Temporal occupancy without re-encoding: a time-indexed frame history + the temporal network. No ROS imports.

The official test path re-encodes every previous frame from images at every sample (SPEC4D 2). What does not
depend on the current ego pose is kept per frame instead (``FrameRecord``): the image-encoder features, the frame's
calibration (sensor2ego) and its per-camera ego poses. For each new camera set only the current images are
encoded; the rest (DepthNet with the current key frame's camera-aware input, BEV pooling of every frame into the
current key ego, pre_process_net, fusion, BEV encoder, heads) is recomputed, because it depends on the current pose.
A frame's depth / context is reused while the key frame's camera-aware input (mlp_input) is unchanged.

History by time (``FrameHistory``): the models were trained with previous nuScenes keyframes, 0.5 s apart, so the
history slot k (k = 1 .. F-1) is the stored frame nearest to ``t - k * 0.5 s``, if it lies within ``tolerance_s``.
A missing slot follows the official first-frame rule (SPEC4D 2: an adjacent frame outside the scene is replaced by
the CURRENT frame). A time stamp not after the previous one, or a gap longer than ``0.5 s + tolerance_s`` since the
previous frame, clears the history with one warning (a bag loop, a pause, a jump).

Explicit history (``encode`` + ``run_with_history``): the caller names the previous frames itself, e.g.
flashocc-predict walking a nuScenes split in the official order (the dataset's previous keyframes, SPEC4D 2).

The node gets its pipeline from ``create_pipeline`` and calls ``run`` (raw images) or ``run_jpeg`` (compressed; the
decode + preprocessing functions of pipeline.py, shared with OccupancyPipeline) per camera set with the set's
calibration and stamp; ``status()`` feeds /diagnostics (docs/node.md "Temporal variants").
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from flashocc_ros.backends.base import CENTER_OUTPUTS
from flashocc_ros.backends.torch_runner import ieee_fp32
from flashocc_ros.config import IMAGE_AUG, FlashOccConfig, ModelVariant, TemporalConfig
from flashocc_ros.inference.pipeline import (
    OccupancyPipeline,
    OccupancyResult,
    PipelineError,
    check_jpegs,
    images_into,
    jpegs_into,
)
from flashocc_ros.network.geometry import NUM_CAMERAS, RigCalibration, make_mlp_input, sensor_to_key_ego
from flashocc_ros.network.model4d import frame_geometry, split_inputs, temporal_geometry

DEFAULT_TOLERANCE_S = TemporalConfig().history_tolerance_s  # the config's defaults (one source of truth)
DEFAULT_MAX_ENTRIES = TemporalConfig().history_max_frames


@dataclass
class FrameRecord:
    """What a stream keeps of one frame (independent of any later ego pose)."""

    stamp: float  # seconds
    features: torch.Tensor  # (6, C_neck, 16, 44) image-encoder output
    sensor2ego: np.ndarray  # (6, 4, 4) float32
    ego2global: np.ndarray  # (6, 4, 4) float32, ego pose at each camera's time
    depth_cache: tuple | None = None  # (key, depth_net_out, depth, context) of the last use
    stereo: torch.Tensor | None = None  # 4D-stereo: (6, 256, 64, 176) layer1 feature, kept while a later frame
    # may still compare against it (one frame interval + tolerance)
    cv_cache: tuple | None = None  # 4D-stereo: (key, cost-volume features (6, D, 16, 44)) of the last use

    @property
    def nbytes(self) -> int:
        tensors = [self.features, self.stereo]
        tensors += list(self.depth_cache[1:]) if self.depth_cache is not None else []
        tensors += [self.cv_cache[1]] if self.cv_cache is not None else []
        n = sum(t.element_size() * t.nelement() for t in tensors if t is not None)
        return n + self.sensor2ego.nbytes + self.ego2global.nbytes


class FrameHistory:
    """Past frames of one stream, chosen by time (see the module docstring)."""

    def __init__(
        self,
        slots: int,
        interval_s: float = 0.5,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        if slots < 0:
            raise ValueError(f"slots: {slots} must be >= 0")
        if not (0.0 < tolerance_s < interval_s / 2):
            raise ValueError(f"tolerance_s: {tolerance_s} must be in (0, {interval_s / 2}) (half the frame interval)")
        if max_entries < slots:
            raise ValueError(f"max_entries: {max_entries} is below the {slots} history slots")
        self.slots = slots
        self.interval_s = float(interval_s)
        self.tolerance_s = float(tolerance_s)
        self.max_entries = int(max_entries)
        self.warn = warn or (lambda msg: warnings.warn(msg, RuntimeWarning, stacklevel=3))
        self._records: list[FrameRecord] = []
        self.last_stamp: float | None = None
        self.stream_start: float | None = None  # first stamp since the start, a reset() or time going back
        self.resets = 0

    def __len__(self) -> int:
        return len(self._records)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self._records)

    def clear(self) -> None:
        self._records.clear()
        self.last_stamp = None
        self.stream_start = None

    def expected(self, stamp: float) -> int:
        """Slots a stream running since ``stream_start`` without gaps could fill at ``stamp`` (0 .. slots)."""
        if self.stream_start is None:
            return 0
        return int(min(self.slots, max(0.0, (stamp - self.stream_start + self.tolerance_s) // self.interval_s)))

    def check_stamp(self, stamp: float) -> str | None:
        """Clear the history (one warning) when ``stamp`` goes back or jumps past the tolerance; the reason."""
        if not np.isfinite(stamp):
            raise PipelineError(f"stamp: {stamp!r} is not a finite time in seconds")
        last = self.last_stamp
        reason = None
        if last is not None and stamp <= last:
            reason = f"time went back from {last:.3f} s to {stamp:.3f} s"
        elif last is not None and stamp - last > self.interval_s + self.tolerance_s:
            reason = f"gap of {stamp - last:.3f} s since the previous frame (> {self.interval_s + self.tolerance_s} s)"
        if reason is not None:
            dropped, start = len(self._records), self.stream_start
            self.clear()
            if stamp > last:  # a gap: the stream goes on (its history should have been kept), see expected()
                self.stream_start = start
            self.resets += 1
            self.warn(f"temporal history reset: {reason}; {dropped} stored frame(s) dropped")
        return reason

    def select(self, stamp: float) -> list[FrameRecord | None]:
        """Slot k = 1 .. slots: the stored frame nearest ``stamp - k * interval``, None if none within tolerance."""
        out: list[FrameRecord | None] = []
        for k in range(1, self.slots + 1):
            target = stamp - k * self.interval_s
            best = min(self._records, key=lambda r: abs(r.stamp - target), default=None)
            out.append(best if best is not None and abs(best.stamp - target) <= self.tolerance_s + 1e-9 else None)
        return out

    def add(self, record: FrameRecord) -> None:
        self._records.append(record)
        self.last_stamp = record.stamp
        if self.stream_start is None:
            self.stream_start = record.stamp
        oldest = record.stamp - self.slots * self.interval_s - self.tolerance_s - 1e-9
        self._records = [r for r in self._records if r.stamp >= oldest][-self.max_entries :]
        stereo_oldest = record.stamp - self.interval_s - self.tolerance_s - 1e-9
        for r in self._records:
            if r.stamp < stereo_oldest:
                r.stereo = None


class TemporalPipeline:
    """Streaming (``run``) and all-frames-at-once (``run_frames``) inference for the temporal variants (PyTorch)."""

    def __init__(
        self,
        cfg: FlashOccConfig,
        model=None,
        with_logits: bool = False,
        tolerance_s: float | None = None,
        max_history_entries: int | None = None,
        keep_stages: bool = False,
        warn: Callable[[str], None] | None = None,
        reuse_history_depth: bool = False,
    ) -> None:
        """``reuse_history_depth``: previous frames keep the DepthNet output they got as the current frame instead
        of re-running the DepthNet with the current frame's camera-aware input (the official model's, which
        changes with the current pose in the last bits): one DepthNet pass per frame instead of F, NOT the official
        arithmetic (deviation measured in docs/model.md). Default False (exact).
        ``tolerance_s`` / ``max_history_entries`` default to ``cfg.temporal.history_tolerance_s`` /
        ``history_max_frames``; ``warn(text)`` gets the history-reset warnings (default: warnings.warn)."""
        self.cfg = cfg.validate()
        self.variant: ModelVariant = cfg.variant
        if not self.variant.temporal:
            raise PipelineError(f"{self.variant.name} is a single-frame variant: use OccupancyPipeline")
        if cfg.model.backend not in ("auto", "pytorch"):
            raise PipelineError(
                f"model.backend {cfg.model.backend!r}: the temporal variants run on the pytorch backend only"
            )
        if model is None:
            from flashocc_ros.backends import resolve_device
            from flashocc_ros.backends.torch_runner import torch_device
            from flashocc_ros.network.loading import load_model

            device = torch_device(resolve_device(cfg.model, "pytorch"))
            model = load_model(self.variant.name, cfg.model.checkpoint or None, device)
        if model.variant.name != self.variant.name:
            raise PipelineError(f"model is {model.variant.name}, config wants {self.variant.name}")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.with_logits = with_logits
        self.keep_stages = keep_stages
        tolerance_s = cfg.temporal.history_tolerance_s if tolerance_s is None else tolerance_s
        max_history_entries = cfg.temporal.history_max_frames if max_history_entries is None else max_history_entries
        self.history = FrameHistory(
            self.variant.num_frames - 1, self.variant.frame_interval_s, tolerance_s, max_history_entries, warn
        )
        self.backend_name = "pytorch"
        self._batch = None  # preprocess.BatchPreprocessor, made on the first camera images
        self._input = np.zeros((NUM_CAMERAS, 3, *IMAGE_AUG.input_hw), np.float32)  # preprocessed images
        self.last_history_depth = 0  # real previous frames used by the last run (0 .. F-1)
        self.last_history_expected = 0  # slots the stream could have filled at the last run (FrameHistory.expected)
        self._status: dict[str, float | int] = {}
        self._update_status()
        self.last_stages: dict | None = None
        self.encoder_passes = 0  # image-encoder passes so far (streaming: one per run)
        self.cost_volume_passes = 0  # 4D-stereo cost volumes computed so far
        self.depth_passes = 0  # DepthNet passes so far
        self.reuse_history_depth = bool(reuse_history_depth)

    # -- streaming --------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.history.clear()
        self._update_status()

    def status(self) -> dict[str, float | int]:
        """For diagnostics, as of the end of the last run / observe / reset (safe to call from another thread):
        previous frames used by the last run (``history_depth``) / wanted (``history_slots``) / that the stream
        could have filled (``history_expected``, see FrameHistory.expected), frames and MB held, resets so far."""
        return dict(self._status)

    def _update_status(self) -> None:
        self._status = {
            "history_depth": self.last_history_depth,
            "history_slots": self.variant.num_frames - 1,
            "history_expected": self.last_history_expected,
            "history_frames": len(self.history),
            "history_mb": round(self.history.nbytes / 2**20, 1),
            "history_resets": self.history.resets,
        }

    def run(self, images, calib: RigCalibration, stamp: float, post_rot=None, post_tran=None, bda=None):
        """One camera set at time ``stamp`` (seconds) -> OccupancyResult; the frame joins the history.

        ``images``: six RGB uint8 HxWx3 arrays of ``calib.image_hw`` in CAMERA_NAMES order (exact official
        preprocessing, as ``OccupancyPipeline.run``) or a preprocessed (6, 3, H, W) float32 array. ``calib`` must
        carry per-camera ego poses (``ego2global``): they place the previous frames in the current ego frame.
        post_rot / post_tran default to the test-time augmentation of ``calib.image_hw``."""
        timings: dict[str, float] = {}
        current = self._encode(partial(self._load_images, images), calib, stamp, timings)
        return self._run_encoded(current, calib, post_rot, post_tran, bda, timings)

    def run_jpeg(self, jpegs, calib: RigCalibration, stamp: float, exact: bool = False):
        """``run`` for six JPEGs: the fast (default) or ``exact`` decode + preprocessing of
        ``OccupancyPipeline.run_jpeg`` (the same functions, ``pipeline.check_jpegs`` / ``jpegs_into``)."""
        timings: dict[str, float] = {}
        current = self._encode(partial(self._load_jpegs, jpegs, exact), calib, stamp, timings)
        return self._run_encoded(current, calib, None, None, None, timings)

    def observe(self, images, calib: RigCalibration, stamp: float) -> None:
        """Add a camera set to the history without computing its occupancy (one image-encoder pass): for frames
        the caller has no time to fuse, or to fill the history after a reset."""
        self.history.add(self._encode(partial(self._load_images, images), calib, stamp, {}))
        self._update_status()

    def _run_encoded(self, current: FrameRecord, calib, post_rot, post_tran, bda, timings) -> OccupancyResult:
        slots = self.history.select(current.stamp)
        self.last_history_expected = self.history.expected(current.stamp)
        post_rot, post_tran = self._augmentation(calib, post_rot, post_tran)
        result = self._fused(current, slots, calib.intrinsics, post_rot, post_tran, bda, timings)
        self.history.add(current)
        self._update_status()
        return result

    # -- decode + preprocess (pipeline.py's functions) ----------------------------------------------------------
    def _preprocessor(self):
        if self._batch is None:
            from flashocc_ros.network.preprocess import BatchPreprocessor

            self._batch = BatchPreprocessor(self.cfg.model.preprocess_threads)
        return self._batch

    def _load_images(self, images, calib: RigCalibration) -> tuple[np.ndarray, dict[str, float]]:
        if isinstance(images, np.ndarray) and images.dtype == np.float32:
            a = images[0] if images.ndim == 5 else images
            if a.shape[:2] != (NUM_CAMERAS, 3) or a.ndim != 4:
                raise PipelineError(f"images: preprocessed array must be (6, 3, H, W) float32, got {images.shape}")
            return a, {"decode": 0.0, "preprocess": 0.0}
        return self._input, images_into(self._preprocessor(), images, self._input, calib.image_hw)

    def _load_jpegs(self, jpegs, exact: bool, calib: RigCalibration) -> tuple[np.ndarray, dict[str, float]]:
        jpegs = check_jpegs(jpegs, calib.image_hw)
        return self._input, jpegs_into(self._preprocessor(), jpegs, self._input, exact=exact)

    def preprocess_jpegs(self, jpegs, calib: RigCalibration, exact: bool = False) -> np.ndarray:
        """Six JPEGs decoded + preprocessed as ``run_jpeg`` does, for ``encode`` / ``run_with_history``; the result
        is the pipeline's input buffer (valid until its next decode)."""
        return self._load_jpegs(jpegs, exact, calib)[0]

    def close(self) -> None:
        if self._batch is not None:
            self._batch.close()
            self._batch = None

    # -- the network ----------------------------------------------------------------------------------------------
    def _encode(self, load, calib, stamp, timings, streaming: bool = True) -> FrameRecord:
        """``load(calib)`` -> (preprocessed (6, 3, H, W) images, decode / preprocess ms); the frame's record."""
        if not isinstance(calib, RigCalibration):
            raise PipelineError(f"calibration: expected a RigCalibration, got {type(calib).__name__}")
        if calib.ego2global is None:
            raise PipelineError("calibration: the temporal variants need the ego poses (RigCalibration.ego2global)")
        imgs, times = load(calib)
        timings.update(times)
        if streaming:
            self.history.check_stamp(float(stamp))
        t1 = time.perf_counter()
        stereo = None
        with torch.inference_mode(), ieee_fp32(self.device):
            img = torch.from_numpy(np.ascontiguousarray(imgs)).to(self.device)
            if self.variant.stereo:
                feat, stereo = self.model.encode_frame_stereo(img)
            else:
                feat = self.model.encode_frame(img)
        self.encoder_passes += 1
        timings["encode"] = (time.perf_counter() - t1) * 1e3
        s2e = np.asarray(calib.sensor2ego, dtype=np.float32)
        e2g = np.asarray(calib.ego2global, dtype=np.float32)
        return FrameRecord(float(stamp), feat, s2e, e2g, stereo=stereo)

    # -- explicit history (offline, the dataset's previous keyframes) --------------------------------------------
    def encode(self, images, calib: RigCalibration, stamp: float = 0.0) -> FrameRecord:
        """One image-encoder pass -> the frame's record, for ``run_with_history``; the streaming history is neither
        read nor changed."""
        return self._encode(partial(self._load_images, images), calib, stamp, {}, streaming=False)

    def run_with_history(
        self, images, calib: RigCalibration, previous: Sequence[FrameRecord | None], stamp: float = 0.0,
        post_rot=None, post_tran=None, bda=None,
    ) -> tuple[OccupancyResult, FrameRecord]:  # fmt: skip
        """One camera set fused with the previous frames the caller chose: ``previous[k - 1]`` is the frame k
        keyframes back (a record from ``encode`` or from an earlier call), None = none (replaced by the current
        frame, the official rule). One image-encoder pass (the current frame); the streaming history is neither
        read nor changed. Returns the result and the current frame's record (for later calls' ``previous``)."""
        slots = list(previous)
        if len(slots) != self.variant.num_frames - 1:
            raise PipelineError(
                f"previous: {self.variant.name} takes {self.variant.num_frames - 1} previous frame(s), got {len(slots)}"
            )
        if not all(r is None or isinstance(r, FrameRecord) for r in slots):
            raise PipelineError("previous: expected FrameRecord or None entries")
        timings: dict[str, float] = {}
        current = self._encode(partial(self._load_images, images), calib, stamp, timings, streaming=False)
        post_rot, post_tran = self._augmentation(calib, post_rot, post_tran)
        return self._fused(current, slots, calib.intrinsics, post_rot, post_tran, bda, timings), current

    def _cv_features(self, rec: FrameRecord, prev: FrameRecord, intrins, post_rot, post_tran) -> torch.Tensor:
        """Cost-volume features of ``rec`` against ``prev`` (its previous keyframe), reused while the pair and the
        camera model are unchanged; they do not depend on the current ego pose."""
        from flashocc_ros.network.model4d import curr_to_adj_sensor

        aug = np.concatenate([np.ravel(np.asarray(a, dtype=np.float32)) for a in (intrins, post_rot, post_tran)])
        key = (id(prev), prev.stamp, aug.tobytes())
        if rec.cv_cache is not None and rec.cv_cache[0] == key:
            return rec.cv_cache[1]
        if rec.stereo is None or prev.stereo is None:
            if rec.cv_cache is not None:  # the pair's features are no longer kept: the frame's own earlier result
                return rec.cv_cache[1]
            raise PipelineError(f"4D-stereo: the stereo features of the frame at {rec.stamp:.3f} s are gone")
        k2s = curr_to_adj_sensor(
            np.stack([rec.sensor2ego, prev.sensor2ego]), np.stack([rec.ego2global, prev.ego2global])
        )
        cv = self.model.cost_volume(rec.stereo, prev.stereo, k2s[0], intrins, post_rot, post_tran)
        self.cost_volume_passes += 1
        cvf = self.model.cost_volume_features(cv)
        rec.cv_cache = (key, cvf)
        return cvf

    def _augmentation(self, calib, post_rot, post_tran):
        if post_rot is None or post_tran is None:
            from flashocc_ros.network.preprocess import augmentation_for

            aug = augmentation_for(calib.image_hw)
            post_rot = np.broadcast_to(aug.post_rot, (NUM_CAMERAS, 3, 3)) if post_rot is None else post_rot
            post_tran = np.broadcast_to(aug.post_tran, (NUM_CAMERAS, 3)) if post_tran is None else post_tran
        return post_rot, post_tran

    def _fused(self, current: FrameRecord, slots, intrins, post_rot, post_tran, bda, timings):
        t_start = time.perf_counter()
        m = self.model
        key = current.ego2global[0]
        s2ke0 = sensor_to_key_ego(current.sensor2ego, current.ego2global)
        mlp = make_mlp_input(s2ke0, intrins, post_rot, post_tran, bda).to(self.device)
        mlp_key = mlp.cpu().numpy().tobytes()
        stereo = self.variant.stereo
        if stereo and slots[0] is None:
            slots = [None] * len(slots)  # official: no previous keyframe -> none before it either (new scene)
        frames = [current] + [r if r is not None else current for r in slots]
        names = ("img_neck", "depth_net_out", "depth_prob", "lss_bev", "pre_process", "sensor2keyego", "num_points")
        stages: dict[str, list] = {k: [] for k in names}
        done: dict[int, tuple] = {}
        with torch.inference_mode(), ieee_fp32(self.device):
            if stereo:  # frames [cur, prev1, prev2]: prev2 only as the stereo reference of prev1
                cvfs = [self._cv_features(frames[k], frames[k + 1], intrins, post_rot, post_tran) for k in (0, 1)]
                frames = frames[: self.variant.bev_frames]
            for k, rec in enumerate(frames):
                if id(rec) not in done:
                    cache = rec.depth_cache
                    dkey = (mlp_key, id(cvfs[k])) if stereo else mlp_key
                    reuse = self.reuse_history_depth and rec is not current and cache is not None
                    if not reuse and (cache is None or cache[0] != dkey):
                        extra = (cvfs[k],) if stereo else ()
                        out, depth, context = m.depth_frame(rec.features, mlp, *extra)
                        self.depth_passes += 1
                        rec.depth_cache = cache = (dkey, out, depth, context)
                    _, out, depth, context = cache
                    s2ke, pool = frame_geometry(
                        self.variant,
                        rec.sensor2ego,
                        rec.ego2global,
                        key,
                        intrins,
                        post_rot,
                        post_tran,
                        bda,
                        history=rec is not current,
                    )
                    bev, pp = m.bev_frame(depth, context, pool.to(self.device))
                    done[id(rec)] = (out, depth, bev, pp, s2ke, pool.num_points)
                for name, value in zip(names, (rec.features, *done[id(rec)])):
                    stages[name].append(value)
            fused = m.fuse(stages["pre_process"])
            heads = m.head(fused)
        self.last_history_depth = sum(r is not None for r in slots)
        timings["inference"] = timings.pop("encode", 0.0) + (time.perf_counter() - t_start) * 1e3
        result = self._postprocess(heads, timings)
        if stereo:
            stages["cv_features"] = cvfs
        self.last_stages = {**stages, "bev_fused": fused, **heads} if self.keep_stages else None
        return result

    # -- all frames at once (official test path) ----------------------------------------------------------------
    def run_frames(self, inputs: dict) -> OccupancyResult:
        """The official answer for one sample given all its frames in the IN.npz layout of make_inputs_4d
        (imgs (1, 6F, 3, H, W) camera-major, matrices frame-major): every frame encoded from its images."""
        t0 = time.perf_counter()
        frames = split_inputs(inputs, self.variant.num_frames)
        geo = temporal_geometry(self.variant, frames)
        with torch.inference_mode(), ieee_fp32(self.device):
            imgs = torch.from_numpy(np.ascontiguousarray(frames["imgs"])).to(self.device)
            pools = [p.to(self.device) for p in geo.pools]
            extra = ()
            if self.variant.stereo:
                from flashocc_ros.network.model4d import curr_to_adj_sensor

                c2a = curr_to_adj_sensor(frames["sensor2egos"], frames["ego2globals"])
                extra = (c2a, frames["intrins"][0], frames["post_rots"][0], frames["post_trans"][0])
            stages = self.model.forward_frames(imgs, pools, geo.mlp_input.to(self.device), *extra)
        self.encoder_passes += self.variant.num_frames
        timings = {"decode": 0.0, "preprocess": 0.0, "inference": (time.perf_counter() - t0) * 1e3}
        result = self._postprocess(stages, timings)
        if self.keep_stages:
            stages["sensor2keyego"] = list(geo.sensor2keyegos)
            stages["num_points"] = [p.num_points for p in geo.pools]
            self.last_stages = stages
        return result

    # -- post-processing ----------------------------------------------------------------------------------------
    def _postprocess(self, heads: dict, timings: dict) -> OccupancyResult:
        t0 = time.perf_counter()
        logits = heads["occ_logits"].float()
        semantic = logits[0].argmax(-1).to(torch.uint8)
        result = OccupancyResult(semantic=semantic.cpu().numpy(), timings_ms=timings)
        if self.with_logits:
            result.logits = logits[0].cpu().numpy()
        if self.variant.panoptic:
            from flashocc_ros.network.centers import decode_centers
            from flashocc_ros.network.panoptic import assign_instances

            centers = decode_centers(
                heads["heatmap"], heads["reg"], heads["height"], score_threshold=self.cfg.model.score_threshold
            )
            pano = assign_instances(semantic, centers, mode=self.cfg.model.pano_mode)
            result.centers = centers
            result.panoptic = pano.panoptic.cpu().numpy().astype(np.int32, copy=False)
            result.instances = pano.instances
            if self.with_logits:
                maps = zip(CENTER_OUTPUTS, (heads["heatmap"], heads["reg"], heads["height"]))
                result.center_maps = {name: t[0].float().cpu().numpy() for name, t in maps}
        timings["postprocess"] = (time.perf_counter() - t0) * 1e3
        return result


def create_pipeline(cfg: FlashOccConfig, warn: Callable[[str], None] | None = None):
    """The pipeline that serves ``cfg`` one camera set at a time (the node's): a TemporalPipeline for a temporal
    variant (history-reset warnings to ``warn``; call ``run`` / ``run_jpeg`` with the set's calibration and stamp),
    else an OccupancyPipeline (``set_calibration``, then ``run`` / ``run_jpeg``)."""
    if cfg.variant.temporal:
        return TemporalPipeline(cfg, warn=warn)
    return OccupancyPipeline(cfg)


def frames_of(inputs: dict, num_frames: int) -> Sequence[dict]:
    """Per-frame pieces of an IN.npz multi-frame input, oldest first: dicts with ``images`` (6, 3, H, W),
    ``calib`` (RigCalibration with that frame's poses), ``post_rot``, ``post_tran``, ``bda`` and ``index`` (k)."""
    fr = split_inputs(inputs, num_frames)
    out = []
    for k in reversed(range(num_frames)):
        calib = RigCalibration(
            intrinsics=fr["intrins"][k], sensor2ego=fr["sensor2egos"][k], ego2global=fr["ego2globals"][k]
        )
        out.append(
            dict(
                index=k,
                images=fr["imgs"][k],
                calib=calib,
                post_rot=fr["post_rots"][k],
                post_tran=fr["post_trans"][k],
                bda=fr["bda"],
            )
        )
    return out
