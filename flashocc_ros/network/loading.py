"""Weights into the network, in one place: a checkpoint (any layout `checkpoint.load_checkpoint` accepts) or the
deterministic untrained weights (`weights.deterministic_state_dict`). The backends and the tests load through here.

Import order (no cycles): config < model < weights < checkpoint < loading < backends.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from flashocc_ros.config import get_variant
from flashocc_ros.network.checkpoint import load_checkpoint
from flashocc_ros.network.model import FlashOcc
from flashocc_ros.network.networks import build_model
from flashocc_ros.network.weights import deterministic_state_dict


def load_state_dict(
    variant: str | None = None, checkpoint: str | Path | None = None, seed: int = 0
) -> tuple[OrderedDict, str]:
    """(state_dict, official variant name): from `checkpoint` (the variant is detected when not given; a
    CheckpointError when it holds another one) or, without a checkpoint, the deterministic weights of `seed`."""
    if checkpoint:
        return load_checkpoint(str(checkpoint), variant)
    if variant is None:
        raise ValueError("give a variant or a checkpoint")
    name = get_variant(variant).name
    return deterministic_state_dict(name, seed), name


def load_model(
    variant: str | None = None,
    checkpoint: str | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> FlashOcc:
    """Build a variant (eval mode) and load its weights strictly (see `load_state_dict`)."""
    state_dict, variant = load_state_dict(variant, checkpoint, seed)
    model = build_model(variant, device)
    model.load_state_dict(state_dict, strict=True)
    return model
