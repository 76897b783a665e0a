"""Evaluate predictions against Occ3D ground truth: mIoU, RayIoU, RayPQ (no ROS imports).

Inputs
  * ground truth: an Occ3D ``gts`` folder, ``<gt_dir>/<scene_name>/<sample_token>/labels.npz`` with ``semantics``,
    ``mask_camera``, ``mask_lidar`` (and ``instances`` in the panoptic layout of SparseOcc's occ3d_panoptic, needed
    for RayPQ);
  * predictions: ``<pred_dir>/<sample_token>.npz`` with ``pred`` (200, 200, 16) uint8 class indices and, for
    panoptic models, ``inst`` (200, 200, 16) int32 (ids >= 18 are instances, smaller values are class indices), or
    in-memory ``Prediction`` objects (the bag reader in ``flashocc_ros.tools.evaluate``);
  * for the ray metrics, the lidar origins of each sample: all keyframes of the sample's scene, LIDAR_TOP poses from
    nuscenes-devkit, expressed in the sample's ego frame (``lidar_origins``).

Samples are scored independently (optionally in worker processes) and summed in sample order, so the result does
not depend on the number of workers. Reports: a per-class text table, JSON and a per-class bar chart.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flashocc_ros.atomic import atomic_save_npz, atomic_write, atomic_write_text
from flashocc_ros.config import CLASS_COLORS, CLASS_NAMES, FREE_INDEX, NUM_CLASSES, OCC_GRID
from flashocc_ros.dataset import devkit
from flashocc_ros.grids import check_labels, check_mask, check_panoptic
from flashocc_ros.metrics import miou as miou_metric
from flashocc_ros.metrics import ray as ray_metric

METRICS: tuple[str, ...] = ("miou", "rayiou", "raypq")
GT_FILE = "labels.npz"
PRED_SEMANTIC_KEY = "pred"
PRED_INSTANCE_KEY = "inst"
LIDAR_CHANNEL = "LIDAR_TOP"


class EvaluationError(ValueError):
    """Bad evaluation input (missing file, key, shape or value); the message names it."""


# ----------------------------------------------------------------------------------------------------------------
# Ground truth and predictions
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundTruthEntry:
    sample_token: str
    scene_name: str
    path: Path


def index_ground_truth(gt_dir: str | Path) -> dict[str, GroundTruthEntry]:
    """{sample_token: entry} for every ``<gt_dir>/<scene>/<token>/labels.npz``."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise EvaluationError(f"ground-truth folder not found: {gt_dir}")
    out: dict[str, GroundTruthEntry] = {}
    for scene in sorted(p for p in gt_dir.iterdir() if p.is_dir()):
        for sample in sorted(p for p in scene.iterdir() if p.is_dir()):
            path = sample / GT_FILE
            if path.is_file():
                out[sample.name] = GroundTruthEntry(sample.name, scene.name, path)
    if not out:
        raise EvaluationError(f"no <scene>/<sample_token>/{GT_FILE} files under {gt_dir} (expected the Occ3D gts/)")
    return out


@dataclass
class GroundTruth:
    semantics: np.ndarray  # (200, 200, 16) uint8
    mask_camera: np.ndarray  # (200, 200, 16) bool
    mask_lidar: np.ndarray  # (200, 200, 16) bool
    instances: np.ndarray | None = None  # (200, 200, 16) int


def _load_npz(path: Path) -> Any:
    try:
        return np.load(path)
    except FileNotFoundError:
        raise EvaluationError(f"file not found: {path}") from None
    except Exception as exc:  # zip / pickle errors: name the file
        raise EvaluationError(f"{path}: not a readable .npz file ({exc})") from None


def _grid(npz: Any, key: str, path: Path, check) -> np.ndarray:
    """npz[key] through one of the `flashocc_ros.grids` checks, errors as EvaluationError naming file and key."""
    if key not in npz.files:
        raise EvaluationError(f"{path}: missing key {key!r} (has {', '.join(npz.files) or 'nothing'})")
    try:
        array = npz[key]  # read lazily: a damaged member (bad CRC) or a pickled object array fails only here
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise EvaluationError(
                f"{path}: key {key!r} is a pickled object array; refused (loading pickles can execute code)"
            ) from None
        raise EvaluationError(f"{path}: key {key!r} cannot be read ({exc})") from None
    except Exception as exc:  # zipfile.BadZipFile (CRC), zlib errors, truncated members
        raise EvaluationError(f"{path}: key {key!r} cannot be read ({type(exc).__name__}: {exc})") from None
    return check(array, f"{path}: key {key!r}", error=EvaluationError)


def load_ground_truth(path: str | Path, need_instances: bool = False) -> GroundTruth:
    path = Path(path)
    with _load_npz(path) as npz:
        gt = GroundTruth(
            semantics=_grid(npz, "semantics", path, check_labels),
            mask_camera=_grid(npz, "mask_camera", path, check_mask),
            mask_lidar=_grid(npz, "mask_lidar", path, check_mask),
        )
        if need_instances:
            if "instances" not in npz.files:
                raise EvaluationError(
                    f"{path}: missing key 'instances' (RayPQ needs the panoptic ground truth, occ3d_panoptic layout)"
                )
            gt.instances = _grid(npz, "instances", path, check_panoptic).astype(np.int64)
    return gt


@dataclass
class Prediction:
    semantic: np.ndarray  # (200, 200, 16) uint8 class indices
    instances: np.ndarray | None = None  # (200, 200, 16) int32 panoptic ids


def load_prediction(path: str | Path, need_instances: bool = False) -> Prediction:
    path = Path(path)
    with _load_npz(path) as npz:
        pred = Prediction(semantic=_grid(npz, PRED_SEMANTIC_KEY, path, check_labels))
        if need_instances:
            if PRED_INSTANCE_KEY not in npz.files:
                raise EvaluationError(f"{path}: missing key {PRED_INSTANCE_KEY!r} (RayPQ needs panoptic predictions)")
            pred.instances = _grid(npz, PRED_INSTANCE_KEY, path, check_panoptic)
    return pred


def ground_truth_has_instances(path: str | Path) -> bool:
    with _load_npz(Path(path)) as npz:
        return "instances" in npz.files


def prediction_has_instances(path: str | Path) -> bool:
    with _load_npz(Path(path)) as npz:
        return PRED_INSTANCE_KEY in npz.files


def write_prediction(path: str | Path, semantic: np.ndarray, instances: np.ndarray | None = None) -> Path:
    """Write ``<token>.npz`` (``pred`` uint8, optional ``inst`` int32) atomically."""
    semantic = np.asarray(semantic)
    if semantic.shape != OCC_GRID.shape:
        raise EvaluationError(f"prediction for {path} has shape {semantic.shape}, expected {OCC_GRID.shape}")
    arrays = {PRED_SEMANTIC_KEY: semantic.astype(np.uint8)}
    if instances is not None:
        arrays[PRED_INSTANCE_KEY] = np.asarray(instances, dtype=np.int32)
    return atomic_save_npz(path, arrays, compressed=True)


def index_predictions(pred_dir: str | Path) -> dict[str, Path]:
    """{sample_token: path} for every ``<pred_dir>/<sample_token>.npz``."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise EvaluationError(f"prediction folder not found: {pred_dir}")
    out = {p.stem: p for p in sorted(pred_dir.glob("*.npz")) if not p.name.startswith(".")}
    if not out:
        raise EvaluationError(f"no <sample_token>.npz prediction files in {pred_dir}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Lidar origins (nuscenes-devkit)
# ----------------------------------------------------------------------------------------------------------------


def load_nuscenes(dataroot: str | Path, version: str = "v1.0-trainval"):
    """A devkit NuScenes object; a clear EvaluationError when the tables are missing."""
    return devkit.load_nuscenes(dataroot, version, EvaluationError)


def _lidar_poses(nusc, sample_token: str) -> tuple[np.ndarray, np.ndarray]:
    """(global_from_lidar, ego_from_lidar) 4x4 of the sample's LIDAR_TOP keyframe."""
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion

    sample = nusc.get("sample", sample_token)
    sd = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    ego_from_lidar = transform_matrix(np.array(cs["translation"]), Quaternion(cs["rotation"]))
    global_from_ego = transform_matrix(np.array(pose["translation"]), Quaternion(pose["rotation"]))
    return global_from_ego.dot(ego_from_lidar), ego_from_lidar


def scene_sample_tokens(nusc, scene_token: str) -> list[str]:
    """Keyframes of a scene in time order."""
    tokens = []
    token = nusc.get("scene", scene_token)["first_sample_token"]
    while token:
        tokens.append(token)
        token = nusc.get("sample", token)["next"]
    return tokens


def split_sample_tokens(nusc, split: str) -> list[str]:
    """Keyframes of the split's scenes, scene by scene (table order), in time order."""
    names = set(devkit.split_scene_names(split, EvaluationError))
    tokens = []
    for scene in nusc.scene:
        if scene["name"] in names:
            tokens += scene_sample_tokens(nusc, scene["token"])
    if not tokens:
        raise EvaluationError(f"no scene of split {split!r} in {nusc.dataroot} ({nusc.version})")
    return tokens


def origin_candidates(global_from_lidar: Sequence[np.ndarray], ego_from_lidar_ref: np.ndarray, ref: int) -> np.ndarray:
    """Lidar positions of every keyframe of a scene in keyframe ``ref``'s ego frame (N, 3) float64.

    Same arithmetic as the published evaluation: the frame's lidar origin is taken to the reference lidar frame
    (inverse of the reference global_from_lidar by matrix inversion), rounded to float32, then mapped by the
    reference ego_from_lidar.
    """
    ref_from_global = np.linalg.inv(global_from_lidar[ref])
    out = []
    for i, pose in enumerate(global_from_lidar):
        if i == ref:
            in_ref_lidar = np.zeros(3, dtype=np.float32)
        else:
            in_ref_lidar = np.array(ref_from_global.dot(pose)[:3, 3], dtype=np.float32)
        padded = np.ones(4)
        padded[:3] = in_ref_lidar
        out.append(np.dot(ego_from_lidar_ref[:3], padded))
    return np.stack(out)


def lidar_origins(nusc, sample_tokens: Iterable[str], progress: bool = False) -> dict[str, np.ndarray]:
    """{sample_token: (T, 3) float64} ray origins (at most 8) for each requested sample."""
    from tqdm import tqdm

    wanted = list(dict.fromkeys(sample_tokens))
    by_scene: dict[str, list[str]] = {}
    for token in wanted:
        try:
            sample = nusc.get("sample", token)
        except KeyError:
            raise EvaluationError(f"sample token {token} is not in the nuScenes tables ({nusc.version})") from None
        by_scene.setdefault(sample["scene_token"], []).append(token)
    out: dict[str, np.ndarray] = {}
    for scene_token, tokens in tqdm(by_scene.items(), desc="lidar origins", unit="scene", disable=not progress):
        frames = scene_sample_tokens(nusc, scene_token)
        poses = [_lidar_poses(nusc, t) for t in frames]
        global_from_lidar = [p[0] for p in poses]
        index = {t: i for i, t in enumerate(frames)}
        for token in tokens:
            ref = index[token]
            cands = origin_candidates(global_from_lidar, poses[ref][1], ref)
            out[token] = ray_metric.subsample_origins(cands)
    return out


def sample_timestamps(nusc, sample_tokens: Iterable[str]) -> dict[str, int]:
    return {t: int(nusc.get("sample", t)["timestamp"]) for t in sample_tokens}


# ----------------------------------------------------------------------------------------------------------------
# Per-sample scoring
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SampleJob:
    sample_token: str
    gt_path: Path
    prediction: Path | Prediction
    origins: np.ndarray | None = None  # (T, 3) float64 metres, needed for the ray metrics


@dataclass
class SampleScores:
    sample_token: str
    confusion: np.ndarray | None = None
    ray_counts: ray_metric.RayIoUCounts | None = None
    pq_counts: ray_metric.RayPQCounts | None = None
    num_rays: int = 0


@dataclass(frozen=True)
class ScoringOptions:
    metrics: tuple[str, ...]
    mask_mode: str = "camera"
    device: str | None = None  # "cpu", "cuda", or None (CUDA when available)


def score_sample(job: SampleJob, options: ScoringOptions) -> SampleScores:
    need_inst = "raypq" in options.metrics
    gt = load_ground_truth(job.gt_path, need_instances=need_inst)
    if isinstance(job.prediction, Prediction):
        pred = job.prediction
        if need_inst and pred.instances is None:
            raise EvaluationError(f"prediction for {job.sample_token} has no instance ids (RayPQ needs panoptic)")
    else:
        pred = load_prediction(job.prediction, need_instances=need_inst)
    if pred.semantic.shape != OCC_GRID.shape:
        raise EvaluationError(f"prediction for {job.sample_token} has shape {pred.semantic.shape}")
    scores = SampleScores(job.sample_token)
    if "miou" in options.metrics:
        mask = miou_metric.select_mask(options.mask_mode, gt.mask_camera, gt.mask_lidar)
        scores.confusion = miou_metric.confusion_matrix(pred.semantic, gt.semantics, mask)
    if "rayiou" in options.metrics or need_inst:
        if job.origins is None or len(job.origins) == 0:
            raise EvaluationError(f"sample {job.sample_token}: no lidar origins (ray metrics need --dataroot)")
        sample = ray_metric.sample_rays(
            pred.semantic,
            gt.semantics,
            job.origins,
            pred_instance=pred.instances if need_inst else None,
            gt_instance=gt.instances if need_inst else None,
            device=options.device,
        )
        scores.num_rays = int(sample.gt_label.size)
        if "rayiou" in options.metrics:
            scores.ray_counts = ray_metric.rayiou_counts(sample)
        if need_inst:
            scores.pq_counts = ray_metric.raypq_counts(sample)
    return scores


def _score_star(args: tuple[SampleJob, ScoringOptions]) -> SampleScores:
    return score_sample(*args)


def iter_scores(
    jobs: Iterable[SampleJob], options: ScoringOptions, num_workers: int = 1, batch: int = 32
) -> Iterator[SampleScores]:
    """Scores in job order; with ``num_workers`` > 1 in a process pool, fed in batches (bounded memory)."""
    if num_workers <= 1:
        for job in jobs:
            yield score_sample(job, options)
        return
    import torch

    uses_cuda = options.device not in (None, "cpu") or (options.device is None and torch.cuda.is_available())
    # CPU workers only run numpy (fork is cheap and safe); CUDA cannot be used in forked children
    ctx = multiprocessing.get_context("spawn" if uses_cuda else "fork")
    with ctx.Pool(num_workers) as pool:
        pending: list[SampleJob] = []
        for job in jobs:
            pending.append(job)
            if len(pending) >= batch * num_workers:
                yield from pool.imap(_score_star, [(j, options) for j in pending])
                pending = []
        if pending:
            yield from pool.imap(_score_star, [(j, options) for j in pending])


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    metrics: tuple[str, ...]
    mask_mode: str
    num_samples: int = 0
    num_rays: int = 0
    miou: miou_metric.MIoUResult | None = None
    rayiou: ray_metric.RayIoUResult | None = None
    raypq: ray_metric.RayPQResult | None = None
    seconds: float = 0.0
    sample_tokens: list[str] = field(default_factory=list)

    def headline(self) -> dict[str, float]:
        """Headline numbers in percent (as the published tables report them)."""
        out: dict[str, float] = {}
        for part in (self.miou, self.rayiou, self.raypq):
            if part is not None:
                out.update({k: 100.0 * v for k, v in part.as_dict().items()})
        return out

    def per_class(self) -> dict[str, dict[str, float]]:
        """{class name: {metric column: percent}} for the 17 non-free classes."""
        table: dict[str, dict[str, float]] = {name: {} for name in CLASS_NAMES[:FREE_INDEX]}
        for c, name in enumerate(CLASS_NAMES[:FREE_INDEX]):
            if self.miou is not None:
                table[name]["IoU"] = 100.0 * self.miou.per_class[c]
            for label, part in (("RayIoU", self.rayiou), ("RayPQ", self.raypq)):
                if part is not None:
                    for j, t in enumerate(ray_metric.RAY_THRESHOLDS_M):
                        table[name][f"{label}@{t:g}"] = 100.0 * part.per_class[j, c]
        return table

    def to_json(self) -> dict:
        out = {
            "num_samples": self.num_samples,
            "metrics": list(self.metrics),
            "mask": self.mask_mode if self.miou is not None else None,
            "num_rays": self.num_rays if (self.rayiou or self.raypq) else None,
            "seconds": round(self.seconds, 3),
            "summary": self.headline(),
            "per_class": self.per_class(),
        }
        if self.miou is not None:
            out["confusion_matrix"] = {"rows": "ground truth", "columns": "prediction", "counts": self.miou.confusion}
        return _json_safe(out)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def evaluate(
    jobs: Iterable[SampleJob],
    options: ScoringOptions,
    num_workers: int = 1,
    progress: bool = True,
    total: int | None = None,
) -> EvaluationResult:
    """Score every job and combine the samples in job order."""
    from tqdm import tqdm

    for m in options.metrics:
        if m not in METRICS:
            raise EvaluationError(f"unknown metric {m!r}; known: {', '.join(METRICS)}")
    start = time.perf_counter()
    result = EvaluationResult(metrics=tuple(options.metrics), mask_mode=options.mask_mode)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    ray_counts = ray_metric.RayIoUCounts()
    pq_counts = ray_metric.RayPQCounts()
    bar = tqdm(total=total, desc="evaluating", unit="sample", disable=not progress)
    for scores in iter_scores(jobs, options, num_workers):
        result.num_samples += 1
        result.num_rays += scores.num_rays
        result.sample_tokens.append(scores.sample_token)
        if scores.confusion is not None:
            confusion += scores.confusion
        if scores.ray_counts is not None:
            ray_counts.add(scores.ray_counts)
        if scores.pq_counts is not None:
            pq_counts.add(scores.pq_counts)  # sample order: float sums match a sequential evaluation
        bar.update(1)
    bar.close()
    if result.num_samples == 0:
        raise EvaluationError("nothing to evaluate: no sample has both a prediction and ground truth")
    if "miou" in options.metrics:
        result.miou = miou_metric.miou_from_confusion(confusion)
    if "rayiou" in options.metrics:
        result.rayiou = ray_metric.rayiou_from_counts(ray_counts)
    if "raypq" in options.metrics:
        result.raypq = ray_metric.raypq_from_counts(pq_counts)
    result.seconds = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return "   -  " if value is None or math.isnan(value) else f"{value:6.2f}"


def format_table(result: EvaluationResult) -> str:
    """Per-class table (percent) with the means in the last row."""
    per_class = result.per_class()
    columns = list(next(iter(per_class.values())).keys())
    width = max(len(n) for n in CLASS_NAMES) + 2
    lines = [f"{'class':<{width}}" + "".join(f"{c:>11}" for c in columns)]
    lines.append("-" * len(lines[0]))
    for name, row in per_class.items():
        lines.append(f"{name:<{width}}" + "".join(f"{_fmt(row[c]):>11}" for c in columns))
    lines.append("-" * len(lines[0]))
    means: dict[str, float] = {}
    if result.miou is not None:
        means["IoU"] = 100.0 * result.miou.miou
    for label, part in (("RayIoU", result.rayiou), ("RayPQ", result.raypq)):
        if part is not None:
            for t, v in zip(ray_metric.RAY_THRESHOLDS_M, part.per_threshold):
                means[f"{label}@{t:g}"] = 100.0 * v
    lines.append(f"{'mean':<{width}}" + "".join(f"{_fmt(means.get(c, float('nan'))):>11}" for c in columns))
    summary = ", ".join(f"{k} {v:.2f}" for k, v in result.headline().items())
    lines.append(f"{result.num_samples} samples: {summary}")
    return "\n".join(lines)


def write_json(result: EvaluationResult, path: str | Path) -> None:
    text = json.dumps(result.to_json(), indent=1)
    atomic_write_text(path, text)


def plot_per_class(result: EvaluationResult, path: str | Path) -> None:
    """Bar chart per class (class colours), one panel per metric: IoU, RayIoU and RayPQ (mean over thresholds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, np.ndarray, float]] = []
    if result.miou is not None:
        panels.append((f"IoU (mask: {result.mask_mode})", result.miou.per_class[:FREE_INDEX], result.miou.miou))
    for label, part, mean in (
        ("RayIoU (mean of 1/2/4 m)", result.rayiou, result.rayiou.rayiou if result.rayiou else None),
        ("RayPQ (mean of 1/2/4 m)", result.raypq, result.raypq.raypq if result.raypq else None),
    ):
        if part is not None:
            with np.errstate(invalid="ignore"):
                values = np.array([_nanmean_or_nan(part.per_class[:, c]) for c in range(FREE_INDEX)])
            panels.append((label, values, mean))
    if not panels:
        raise EvaluationError("nothing to plot")
    colors = np.array(CLASS_COLORS[:FREE_INDEX], dtype=float) / 255.0
    names = CLASS_NAMES[:FREE_INDEX]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), squeeze=False)
    for ax, (title, values, mean) in zip(axes[:, 0], panels):
        heights = 100.0 * np.nan_to_num(values, nan=0.0)
        ax.bar(np.arange(FREE_INDEX), heights, color=colors, edgecolor="0.2", linewidth=0.8)
        for i, v in enumerate(values):
            ax.text(i, 100.0 * (0 if math.isnan(v) else v) + 1, "n/a" if math.isnan(v) else f"{100 * v:.1f}",
                    ha="center", va="bottom", fontsize=7)  # fmt: skip
        if mean is not None and not math.isnan(mean):
            ax.axhline(100.0 * mean, color="0.3", linestyle="--", linewidth=1)
            title = f"{title}: mean {100 * mean:.2f}"
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 105)
        ax.set_ylabel("%")
        ax.set_xticks(np.arange(FREE_INDEX))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    fig.suptitle(f"{result.num_samples} samples", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)


def _nanmean_or_nan(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")
