"""Occ3D-nuScenes mIoU with the published convention.

Voxels are selected with a visibility mask (``camera`` by default, as the FlashOcc / Occ3D tables use; ``lidar`` or
``none`` optionally), one 18 x 18 confusion matrix (rows = ground truth, columns = prediction, free included) is
accumulated over all samples, IoU_c = TP / (TP + FP + FN) per class, and mIoU is the mean over the 17 non-free
classes that occur (NaN classes are skipped). ``confusion_matrix`` skips ground-truth values outside 0..17 as the
reference does; the evaluation's ground-truth loader refuses such files before they get here (docs/evaluation.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flashocc_ros.config import FREE_INDEX, NUM_CLASSES, OCC_GRID

MASK_MODES: tuple[str, ...] = ("camera", "lidar", "none")


def select_mask(mode: str, mask_camera: np.ndarray | None, mask_lidar: np.ndarray | None) -> np.ndarray | None:
    """The boolean voxel mask for ``mode`` (None = all voxels)."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode {mode!r} is not one of {', '.join(MASK_MODES)}")
    if mode == "none":
        return None
    mask = mask_camera if mode == "camera" else mask_lidar
    if mask is None:
        raise ValueError(f"mask mode {mode!r} needs mask_{mode} in the ground truth")
    return np.asarray(mask).astype(bool)


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(18, 18) int64 counts [gt, pred] over the voxels selected by ``mask``."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if mask is not None:
        if mask.shape != gt.shape:
            raise ValueError(f"mask shape {mask.shape} differs from ground-truth shape {gt.shape}")
        pred, gt = pred[mask], gt[mask]
    else:
        pred, gt = pred.reshape(-1), gt.reshape(-1)
    gt = gt.astype(np.int64)
    pred = pred.astype(np.int64)
    labelled = (gt >= 0) & (gt < NUM_CLASSES)
    gt, pred = gt[labelled], pred[labelled]
    if pred.size and (pred.min() < 0 or pred.max() >= NUM_CLASSES):
        bad = pred[(pred < 0) | (pred >= NUM_CLASSES)][0]
        raise ValueError(f"prediction contains class index {bad}, expected 0..{NUM_CLASSES - 1}")
    counts = np.bincount(gt * NUM_CLASSES + pred, minlength=NUM_CLASSES * NUM_CLASSES)
    return counts.reshape(NUM_CLASSES, NUM_CLASSES).astype(np.int64)


@dataclass
class MIoUResult:
    confusion: np.ndarray  # (18, 18) int64 [gt, pred]
    per_class: np.ndarray  # (18,) float64 IoU in [0, 1], NaN for classes absent from both GT and prediction
    miou: float  # mean over classes 0..16 (fraction, not percent)

    def as_dict(self) -> dict:
        return {"mIoU": self.miou}


def miou_from_confusion(confusion: np.ndarray) -> MIoUResult:
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.shape != (NUM_CLASSES, NUM_CLASSES):
        raise ValueError(f"confusion matrix has shape {confusion.shape}, expected {(NUM_CLASSES, NUM_CLASSES)}")
    hist = confusion.astype(np.float64)
    tp = np.diag(hist)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (hist.sum(axis=1) + hist.sum(axis=0) - tp)
    non_free = iou[:FREE_INDEX]
    miou = float(np.nanmean(non_free)) if np.isfinite(non_free).any() else float("nan")
    return MIoUResult(confusion=confusion, per_class=iou, miou=miou)


class MIoUAccumulator:
    """Accumulates the global confusion matrix sample by sample (integer counts: order does not matter)."""

    def __init__(self, mask_mode: str = "camera") -> None:
        select_mask(mask_mode, np.ones(1), np.ones(1))  # validates the mode
        self.mask_mode = mask_mode
        self.confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
        self.num_samples = 0

    def add(
        self,
        pred: np.ndarray,
        gt: np.ndarray,
        mask_camera: np.ndarray | None = None,
        mask_lidar: np.ndarray | None = None,
    ) -> np.ndarray:
        """Add one sample; returns its own confusion matrix."""
        if np.shape(gt) != OCC_GRID.shape:
            raise ValueError(f"ground truth has shape {np.shape(gt)}, expected {OCC_GRID.shape}")
        conf = confusion_matrix(pred, gt, select_mask(self.mask_mode, mask_camera, mask_lidar))
        self.add_confusion(conf)
        return conf

    def add_confusion(self, confusion: np.ndarray) -> None:
        self.confusion += confusion
        self.num_samples += 1

    def result(self) -> MIoUResult:
        return miou_from_confusion(self.confusion)
