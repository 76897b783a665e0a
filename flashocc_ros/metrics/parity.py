"""The label near-tie rule of the parity checks, written once for the tests (``test/reference/near_ties.py``) and
the device check (``tools/gpu_check.py``).

Float32 sums grouped differently (other CPU kernels, thread counts, GPUs) move the last bits of the logits, so an
argmax over 18 classes may flip where two logits are (nearly) equal, and nowhere else: a voxel may differ from the
official label only where our top-2 logit gap is below ``LABEL_MARGIN`` (1e-3, the golden data's
``occ_margin_lt_1e-3``) widened by the logit deviation the backend is held to (both logits may move by that much),
the official label must be among our near-best classes, and never more voxels may differ than the official count
of such near-ties. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LABEL_MARGIN = 1e-3


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """Gap between the largest and the second-largest logit along the last axis."""
    part = np.partition(logits, -2, axis=-1)
    return part[..., -1] - part[..., -2]


@dataclass(frozen=True)
class LabelParity:
    differ: np.ndarray  # bool mask of the voxels whose label differs from the official one
    allowed: int  # the official count of near-ties
    bound: float  # top-2 gap below which a differing label is a near-tie
    not_near_ties: int  # differing voxels whose top-2 gap is >= bound
    not_near_best: int  # differing voxels whose official label is not within bound of our best logit

    @property
    def flips(self) -> int:
        return int(self.differ.sum())

    @property
    def ok(self) -> bool:
        return self.flips <= self.allowed and self.not_near_ties == 0 and self.not_near_best == 0


def label_parity(ours: np.ndarray, official: np.ndarray, our_logits: np.ndarray, official_near_ties: int,
                 logit_tolerance: float) -> LabelParity:  # fmt: skip
    """The label rule applied to our labels (``ours``) and logits against the official labels; ``logit_tolerance``
    is the absolute logit deviation from the official answer this backend is held to (e.g. 1e-4 x std)."""
    differ = ours != official
    bound = LABEL_MARGIN + 2.0 * float(logit_tolerance)
    rows = our_logits[differ]  # (flips, classes)
    official_logit = np.take_along_axis(rows, official[differ].astype(np.int64)[:, None], 1)[:, 0]
    margin, near_best = top2_margin(rows), rows.max(-1) - official_logit < bound
    return LabelParity(
        differ=differ,
        allowed=int(official_near_ties),
        bound=bound,
        not_near_ties=int((margin >= bound).sum()),
        not_near_best=int((~near_best).sum()),
    )
