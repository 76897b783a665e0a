"""Instance-centre decoding of the Panoptic-FlashOcc centerness head (official ``get_centers``, SPEC 9).

sigmoid -> 3x3 max-pool NMS -> per-class top-K over the 200x200 cells -> top-K over all classes (descending) ->
``x = (col + reg_x) * 4 * 0.1 - 40``, ``y = (row + reg_y) * 4 * 0.1 - 40`` (no +0.5), ``z = height`` ->
keep ``score > threshold`` (strict) inside [-61.2, -61.2, -10] .. [61.2, 61.2, 10]. The float32 operation order
is the official one so that centres quantise into the same voxels downstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from flashocc_ros.config import HEAD_CLASS_NAMES

OUT_SIZE_FACTOR = 4
VOXEL_SIZE_XY = 0.1
PC_RANGE_MIN_XY = (-40.0, -40.0)
POST_CENTER_RANGE = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
DEFAULT_SCORE_THRESHOLD = 0.3
DEFAULT_MAX_NUM = 500


@dataclass
class Centers:
    """Decoded instance centres in descending score order (torch tensors on the decoding device).

    xyz: (K, 3) float32 metres in the ego frame; score: (K,) float32 sigmoid score; label: (K,) int64 head class
    (index into config.HEAD_CLASS_NAMES).
    """

    xyz: torch.Tensor
    score: torch.Tensor
    label: torch.Tensor

    def __len__(self) -> int:
        return int(self.score.shape[0])

    @property
    def class_names(self) -> list[str]:
        return [HEAD_CLASS_NAMES[int(i)] for i in self.label.tolist()]

    def numpy(self) -> dict[str, np.ndarray]:
        """{'centers_xyz', 'centers_score', 'centers_label'} numpy arrays (the golden / flashocc-infer names)."""
        return {
            "centers_xyz": self.xyz.detach().cpu().numpy().astype(np.float32),
            "centers_score": self.score.detach().cpu().numpy().astype(np.float32),
            "centers_label": self.label.detach().cpu().numpy().astype(np.int64),
        }

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> Centers:
        return Centers(
            torch.zeros((0, 3), dtype=torch.float32, device=device),
            torch.zeros((0,), dtype=torch.float32, device=device),
            torch.zeros((0,), dtype=torch.int64, device=device),
        )


def _map(name: str, t: torch.Tensor, channels: int) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[0] != 1 or t.shape[1] != channels:
        raise ValueError(f"{name}: expected shape (1, {channels}, H, W) or ({channels}, H, W), got {tuple(t.shape)}")
    return t.float()


def decode_centers(
    heatmap_logits: torch.Tensor,
    reg: torch.Tensor,
    height: torch.Tensor,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    max_num: int = DEFAULT_MAX_NUM,
) -> Centers:
    """Decode centres from the raw head maps: heatmap logits (1, 10, H, W), reg (1, 2, H, W), height (1, 1, H, W)."""
    heatmap_logits = _map("heatmap_logits", heatmap_logits, len(HEAD_CLASS_NAMES))
    reg = _map("reg", reg, 2)
    height = _map("height", height, 1)
    _, num_cls, h, w = heatmap_logits.shape
    if tuple(reg.shape[2:]) != (h, w) or tuple(height.shape[2:]) != (h, w):
        sizes = f"{tuple(reg.shape[2:])}/{tuple(height.shape[2:])}"
        raise ValueError(f"reg/height: spatial size {sizes} differs from the heatmap's {(h, w)}")
    heat = heatmap_logits.sigmoid()
    peak = F.max_pool2d(heat, kernel_size=3, stride=1, padding=1)
    heat = heat * (peak == heat).float()

    k = min(max_num, h * w)
    cls_scores, cls_inds = torch.topk(heat.view(1, num_cls, -1), k)  # (1, C, k)
    top_scores, top_pos = torch.topk(cls_scores.view(1, -1), min(max_num, num_cls * k))  # (1, K), descending
    labels = torch.div(top_pos, k, rounding_mode="floor")
    cell = cls_inds.view(1, -1).gather(1, top_pos)[0]  # flat cell index row * W + col
    rows = torch.div(cell, w, rounding_mode="floor").float()
    cols = (cell % w).float()

    reg_flat = reg.view(2, -1)
    xs = cols + reg_flat[0].index_select(0, cell)
    ys = rows + reg_flat[1].index_select(0, cell)
    zs = height.view(-1).index_select(0, cell)
    xs = xs * OUT_SIZE_FACTOR * VOXEL_SIZE_XY + PC_RANGE_MIN_XY[0]
    ys = ys * OUT_SIZE_FACTOR * VOXEL_SIZE_XY + PC_RANGE_MIN_XY[1]
    xyz = torch.stack([xs, ys, zs], dim=1)
    scores = top_scores[0]

    lo = torch.tensor(POST_CENTER_RANGE[:3], device=xyz.device)
    hi = torch.tensor(POST_CENTER_RANGE[3:], device=xyz.device)
    keep = (scores > score_threshold) & (xyz >= lo).all(1) & (xyz <= hi).all(1)
    return Centers(xyz=xyz[keep].contiguous(), score=scores[keep].contiguous(), label=labels[0][keep].long())
