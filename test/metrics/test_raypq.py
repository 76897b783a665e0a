"""RayPQ matching rules on hand-built ray samples with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flashocc_ros.config import FREE_INDEX, OCC_GRID
from flashocc_ros.metrics import ray

BARRIER, BUS, CAR, TRUCK, MANMADE = 1, 3, 4, 10, 15


def make_sample(gt_label, pred_label, gt_inst, pred_inst, l1=None):
    n = len(gt_label)
    gt_d = np.full(n, 10.0, np.float32)
    pred_d = gt_d + (np.zeros(n, np.float32) if l1 is None else np.asarray(l1, np.float32))
    return ray.RaySample(
        gt_label=np.asarray(gt_label, np.int64),
        pred_label=np.asarray(pred_label, np.int64),
        gt_distance=gt_d,
        pred_distance=pred_d,
        gt_instance=np.asarray(gt_inst, np.int64),
        pred_instance=np.asarray(pred_inst, np.int64),
    )


def pq(sample):
    counts = ray.raypq_counts(sample)
    return counts, ray.raypq_from_counts(counts)


def test_perfect_instance_match():
    s = make_sample([CAR] * 20, [CAR] * 20, [5] * 20, [30] * 20)
    counts, result = pq(s)
    np.testing.assert_array_equal(counts.tp[:, CAR], 1)
    np.testing.assert_array_equal(counts.iou_sum[:, CAR], 1.0)
    np.testing.assert_array_equal(result.per_class[:, CAR], 1.0)
    assert result.raypq == 1.0 and result.per_threshold == (1.0, 1.0, 1.0)
    assert np.isnan(np.delete(result.per_class, CAR, axis=1)).all()


def test_iou_of_exactly_one_half_is_not_a_match():
    s = make_sample([CAR] * 20, [CAR] * 20, [5] * 20, [30] * 10 + [31] * 10)
    counts, result = pq(s)
    np.testing.assert_array_equal(counts.tp[:, CAR], 0)
    np.testing.assert_array_equal(counts.fn[:, CAR], 1)
    np.testing.assert_array_equal(counts.fp[:, CAR], 2)
    np.testing.assert_array_equal(result.per_class[:, CAR], 0.0)  # defined (FP/FN exist), zero


@pytest.mark.parametrize("extra, car_pq, manmade_fn", [(9, 1.0, 0), (10, 2 / 3, 1)])
def test_segments_below_ten_rays_are_neither_fp_nor_fn(extra, car_pq, manmade_fn):
    # 20 matched car rays, plus `extra` rays that are manmade in the GT but a second car in the prediction
    s = make_sample(
        [CAR] * 20 + [MANMADE] * extra,
        [CAR] * (20 + extra),
        [5] * 20 + [0] * extra,
        [30] * 20 + [31] * extra,
    )
    counts, result = pq(s)
    np.testing.assert_array_equal(counts.tp[:, CAR], 1)
    np.testing.assert_array_equal(counts.fp[:, CAR], 1 if extra >= 10 else 0)
    np.testing.assert_array_equal(counts.fn[:, MANMADE], manmade_fn)
    np.testing.assert_allclose(result.per_class[:, CAR], car_pq)
    if extra < 10:
        assert np.isnan(result.per_class[:, MANMADE]).all()
    else:
        np.testing.assert_array_equal(result.per_class[:, MANMADE], 0.0)


def test_distance_threshold_limits_the_intersection_not_the_areas():
    l1 = [1.5] * 8 + [0.0] * 12
    s = make_sample([CAR] * 20, [CAR] * 20, [5] * 20, [30] * 20, l1=l1)
    counts, result = pq(s)
    # at 1 m only 12 rays intersect: IoU 12 / (20 + 20 - 12) < 0.5 -> no match; at 2 m and 4 m a perfect match
    np.testing.assert_array_equal(counts.tp[:, CAR], [0, 1, 1])
    np.testing.assert_array_equal(result.per_class[:, CAR], [0.0, 1.0, 1.0])
    assert result.raypq == pytest.approx(2 / 3)
    s2 = make_sample([CAR] * 20, [CAR] * 20, [5] * 20, [30] * 20, l1=[1.5] * 4 + [0.0] * 16)
    counts2, _ = pq(s2)
    assert counts2.iou_sum[0, CAR] == pytest.approx(16 / 24)  # 16 / (20 + 20 - 16) > 0.5 -> matched with IoU 2/3


def test_stuff_classes_are_one_segment_whatever_their_instances():
    # barrier is a stuff class for RayPQ: two GT instances merge into one 20-ray segment
    s = make_sample([BARRIER] * 20, [BARRIER] * 20, [3] * 10 + [4] * 10, [BARRIER] * 20)
    counts, result = pq(s)
    np.testing.assert_array_equal(counts.tp[:, BARRIER], 1)
    np.testing.assert_array_equal(result.per_class[:, BARRIER], 1.0)
    # the same layout on a thing class stays two 10-ray instances: each has IoU 0.5 with the 20-ray prediction
    s_thing = make_sample([CAR] * 20, [CAR] * 20, [3] * 10 + [4] * 10, [40] * 20)
    counts_thing, _ = pq(s_thing)
    np.testing.assert_array_equal(counts_thing.tp[:, CAR], 0)
    np.testing.assert_array_equal(counts_thing.fn[:, CAR], 2)


def test_thing_rays_without_instance_form_their_own_segment():
    s = make_sample([CAR] * 20, [CAR] * 20, [0] * 10 + [7] * 10, [40] * 10 + [41] * 10)
    counts, _ = pq(s)
    np.testing.assert_array_equal(counts.tp[:, CAR], 2)


def test_ground_truth_segment_numbering_follows_the_reference():
    labels = np.array([CAR, CAR, 11, 11, BUS, BUS, TRUCK, CAR])
    inst = np.array([2, 2, 0, 0, 5, 5, 9, 9])  # instance 9 spans two classes -> not used
    seg = ray.ground_truth_segments(labels, inst)
    # classes in order: bus (thing) inst 5 -> 2; car (thing) inst 2 -> 3; driveable_surface (stuff) -> 4; truck:
    # no usable instance -> 1 (the "no instance" segment, like the car ray of instance 9)
    np.testing.assert_array_equal(seg, [3, 3, 4, 4, 2, 2, 1, 1])


def test_pq_is_sq_times_rq():
    # GT car A (20 rays) matched with IoU 0.8, GT car B (15 rays) missed -> SQ 0.8, RQ 1 / 1.5
    gt_label = [CAR] * 35
    gt_inst = [1] * 20 + [2] * 15
    pred_label = [CAR] * 16 + [FREE_INDEX] * 4 + [FREE_INDEX] * 15
    pred_inst = [50] * 16 + [FREE_INDEX] * 19
    counts, result = pq(make_sample(gt_label, pred_label, gt_inst, pred_inst))
    np.testing.assert_array_equal(counts.tp[:, CAR], 1)
    np.testing.assert_array_equal(counts.fn[:, CAR], 1)
    np.testing.assert_allclose(result.per_class[:, CAR], 0.8 / 1.5)


def test_counts_accumulate_and_empty_sample():
    a, _ = pq(make_sample([CAR] * 20, [CAR] * 20, [5] * 20, [30] * 20))
    b, _ = pq(make_sample([CAR] * 20, [TRUCK] * 20, [5] * 20, [30] * 20))
    total = ray.RayPQCounts().add(a).add(b)
    result = ray.raypq_from_counts(total)
    np.testing.assert_allclose(result.per_class[:, CAR], 1 / 1.5)  # 1 TP, 1 FN
    np.testing.assert_array_equal(result.per_class[:, TRUCK], 0.0)  # 1 FP
    empty, r_empty = pq(make_sample([], [], [], []))
    assert empty.tp.sum() == 0 and math.isnan(r_empty.raypq)
    with pytest.raises(ValueError, match="instance ids"):
        ray.raypq_counts(ray.RaySample(*(np.zeros(1),) * 4))


def test_raypq_end_to_end_on_grids():
    gt = np.full(OCC_GRID.shape, FREE_INDEX, np.uint8)
    gt_inst = np.zeros(OCC_GRID.shape, np.int32)
    gt[112:122, 95:100, 2:6] = CAR
    gt_inst[112:122, 95:100, 2:6] = 1
    gt[112:122, 102:107, 2:6] = CAR
    gt_inst[112:122, 102:107, 2:6] = 2
    pred_inst = np.where(gt_inst == 1, 18, np.where(gt_inst == 2, 19, gt)).astype(np.int32)
    origins = np.array([[0.94, 0.0, 1.84]])
    s = ray.sample_rays(gt, gt, origins, pred_instance=pred_inst, gt_instance=gt_inst, device="cpu")
    counts, result = pq(s)
    np.testing.assert_array_equal(counts.tp[:, CAR], 2)
    assert result.raypq == 1.0
    merged = np.where(gt == CAR, 18, gt).astype(np.int32)  # both cars one predicted instance
    s2 = ray.sample_rays(gt, gt, origins, pred_instance=merged, gt_instance=gt_inst, device="cpu")
    _, r2 = pq(s2)
    assert r2.raypq < 1.0
