"""mIoU against a direct, per-class computation of the published convention on random grids."""

from __future__ import annotations

import numpy as np
import pytest

from flashocc_ros.config import FREE_INDEX, NUM_CLASSES, OCC_GRID
from flashocc_ros.metrics.miou import MIoUAccumulator, confusion_matrix, miou_from_confusion, select_mask


def _direct_miou(preds, gts, masks):
    """Per class: TP / (TP + FP + FN) summed over all samples on the masked voxels; mean of the defined ones 0..16."""
    ious = []
    for c in range(NUM_CLASSES):
        tp = fp = fn = 0
        for p, g, m in zip(preds, gts, masks):
            p, g = p[m], g[m]
            tp += int(np.sum((p == c) & (g == c)))
            fp += int(np.sum((p == c) & (g != c)))
            fn += int(np.sum((p != c) & (g == c)))
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else float("nan"))
    ious = np.array(ious)
    return ious, float(np.nanmean(ious[:FREE_INDEX]))


def _random_sample(rng, absent=()):
    gt = rng.integers(0, NUM_CLASSES, OCC_GRID.shape).astype(np.uint8)
    # bias towards free like real scenes, and let predictions agree with the GT most of the time
    gt[rng.random(OCC_GRID.shape) < 0.6] = FREE_INDEX
    pred = np.where(rng.random(OCC_GRID.shape) < 0.7, gt, rng.integers(0, NUM_CLASSES, OCC_GRID.shape)).astype(np.uint8)
    for c in absent:
        gt[gt == c] = FREE_INDEX
        pred[pred == c] = FREE_INDEX
    cam = rng.random(OCC_GRID.shape) < 0.5
    lidar = rng.random(OCC_GRID.shape) < 0.3
    return pred, gt, cam, lidar


@pytest.mark.parametrize("mode", ["camera", "lidar", "none"])
def test_miou_matches_direct_computation(mode):
    rng = np.random.default_rng(7)
    samples = [_random_sample(rng, absent=(3,) if i < 2 else ()) for i in range(3)]
    acc = MIoUAccumulator(mode)
    for pred, gt, cam, lidar in samples:
        acc.add(pred, gt, mask_camera=cam.astype(np.uint8), mask_lidar=lidar.astype(np.uint8))
    masks = {
        "camera": [s[2] for s in samples],
        "lidar": [s[3] for s in samples],
        "none": [np.ones(OCC_GRID.shape, bool)] * 3,
    }[mode]
    ious, miou = _direct_miou([s[0] for s in samples], [s[1] for s in samples], masks)
    result = acc.result()
    np.testing.assert_allclose(result.per_class, ious, rtol=1e-12, equal_nan=True)
    assert result.miou == pytest.approx(miou, rel=1e-12)
    assert acc.num_samples == 3
    # the confusion matrix includes free and every selected voxel exactly once
    assert result.confusion.sum() == sum(int(m.sum()) for m in masks)


def test_absent_class_is_nan_and_skipped_in_mean():
    gt = np.full(OCC_GRID.shape, FREE_INDEX, np.uint8)
    gt[:10] = 4  # car
    pred = gt.copy()
    pred[:5] = FREE_INDEX
    result = miou_from_confusion(confusion_matrix(pred, gt))
    assert result.per_class[4] == pytest.approx(0.5)
    assert np.isnan(result.per_class[:FREE_INDEX]).sum() == 16
    assert result.miou == pytest.approx(0.5)  # only car is defined among 0..16; free is excluded from the mean
    assert result.per_class[FREE_INDEX] == pytest.approx((gt.size - 10 * 200 * 16) / (gt.size - 5 * 200 * 16))


def test_free_counts_in_matrix_but_not_in_mean():
    gt = np.full(OCC_GRID.shape, 11, np.uint8)
    pred = np.full(OCC_GRID.shape, FREE_INDEX, np.uint8)
    result = miou_from_confusion(confusion_matrix(pred, gt))
    assert result.confusion[11, FREE_INDEX] == gt.size
    assert result.miou == 0.0


def test_bad_inputs_raise_clear_errors():
    gt = np.zeros(OCC_GRID.shape, np.uint8)
    with pytest.raises(ValueError, match="class index 18"):
        confusion_matrix(np.full(OCC_GRID.shape, 18, np.uint8), gt)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((200, 200, 15), np.uint8), gt)
    with pytest.raises(ValueError, match="mask mode 'bogus'"):
        MIoUAccumulator("bogus")
    with pytest.raises(ValueError, match="mask_camera"):
        select_mask("camera", None, None)


def test_gt_values_outside_classes_are_ignored():
    gt = np.full(OCC_GRID.shape, 255, np.uint8)
    gt[0] = 4
    pred = np.full(OCC_GRID.shape, 4, np.uint8)
    conf = confusion_matrix(pred, gt)
    assert conf.sum() == 200 * 16
    assert conf[4, 4] == 200 * 16
