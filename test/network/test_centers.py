"""Centre decoding (official get_centers semantics: sigmoid, 3x3 NMS, top-K, strict threshold, no +0.5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flashocc_ros.network.centers import Centers, decode_centers


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _maps(peaks, fill=-10.0):
    """peaks: [(class, row, col, prob, reg_x, reg_y, z)] -> heatmap logits, reg, height (1, C, 200, 200)."""
    heat = torch.full((1, 10, 200, 200), fill)
    reg = torch.zeros(1, 2, 200, 200)
    height = torch.zeros(1, 1, 200, 200)
    for cls, r, c, p, rx, ry, z in peaks:
        heat[0, cls, r, c] = _logit(p)
        reg[0, 0, r, c], reg[0, 1, r, c], height[0, 0, r, c] = rx, ry, z
    return heat, reg, height


def test_coordinates_order_and_labels():
    peaks = [(0, 100, 50, 0.9, 0.25, 0.5, 1.5), (8, 10, 199, 0.6, 0.0, 0.0, -0.5), (3, 0, 0, 0.75, 0.1, 0.2, 0.0)]
    c = decode_centers(*_maps(peaks))
    assert isinstance(c, Centers) and len(c) == 3
    assert c.label.tolist() == [0, 3, 8] and c.label.dtype == torch.int64
    assert np.all(np.diff(c.score.numpy()) <= 0)
    # x from the column (BEV x), y from the row, 0.4 m cells, no +0.5, z = raw height
    np.testing.assert_allclose(c.xyz[0].numpy(), [(50 + 0.25) * 0.4 - 40, (100 + 0.5) * 0.4 - 40, 1.5], atol=1e-5)
    np.testing.assert_allclose(c.xyz[2].numpy(), [199 * 0.4 - 40, 10 * 0.4 - 40, -0.5], atol=1e-5)
    np.testing.assert_allclose(c.score.numpy(), [0.9, 0.75, 0.6], atol=1e-6)
    assert c.class_names == ["car", "bus", "pedestrian"]
    arrays = c.numpy()
    assert set(arrays) == {"centers_xyz", "centers_score", "centers_label"}


def test_threshold_is_strict_and_nms_suppresses_neighbours():
    thr = float(torch.sigmoid(torch.tensor(_logit(0.3))))  # the float32 score a 0.3 peak decodes to
    peaks = [(1, 50, 50, 0.8, 0, 0, 0), (1, 50, 51, 0.7, 0, 0, 0), (1, 52, 52, 0.65, 0, 0, 0)]
    peaks.append((2, 80, 80, 0.3, 0, 0, 0))
    c = decode_centers(*_maps(peaks), score_threshold=thr)
    # (50,51) is next to a higher peak -> suppressed; (52,52) is two cells away -> kept; score == threshold dropped
    assert [(round(float(y), 1), round(float(x), 1)) for x, y, _ in c.xyz.tolist()] == [(-20.0, -20.0), (-19.2, -19.2)]
    assert len(decode_centers(*_maps(peaks), score_threshold=thr - 1e-6)) == 3


def test_max_num_and_range_filter():
    peaks = [(0, r, c, 0.5 + 0.001 * (r + c) / 10, 0, 0, 0) for r in range(0, 200, 20) for c in range(0, 200, 20)]
    assert len(decode_centers(*_maps(peaks))) == 100
    top = decode_centers(*_maps(peaks), max_num=7)
    assert len(top) == 7 and top.score[0] >= top.score[-1]
    far = _maps([(0, 100, 100, 0.9, 0, 0, 12.0), (0, 20, 20, 0.9, 0, 0, 9.0)])
    c = decode_centers(*far)  # |z| > 10 is outside the post-centre range
    assert len(c) == 1 and float(c.xyz[0, 2]) == 9.0


def test_empty_and_bad_shapes():
    c = decode_centers(*_maps([]))
    assert len(c) == 0 and c.xyz.shape == (0, 3)
    assert len(Centers.empty()) == 0
    heat, reg, height = _maps([])
    with pytest.raises(ValueError, match="heatmap_logits: expected shape"):
        decode_centers(heat[:, :5], reg, height)
    with pytest.raises(ValueError, match="reg/height: spatial size"):
        decode_centers(heat, reg[..., :100], height)
    # unbatched maps are accepted
    assert len(decode_centers(heat[0], reg[0], height[0])) == 0
