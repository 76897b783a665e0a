"""Which network a variant uses, and building it: ``FlashOcc`` (model.py) for the single-frame variants,
``FlashOcc4D`` / ``FlashOccStereo4D`` (model4d.py) for the temporal ones."""

from __future__ import annotations

import torch

from flashocc_ros.config import ModelVariant, get_variant
from flashocc_ros.network.model import FlashOcc
from flashocc_ros.network.model4d import FlashOcc4D, FlashOccStereo4D


def network_class(variant: ModelVariant) -> type[FlashOcc]:
    """FlashOcc for the single-frame variants, FlashOcc4D / FlashOccStereo4D for the temporal ones."""
    if variant.temporal:
        return FlashOccStereo4D if variant.stereo else FlashOcc4D
    return FlashOcc


def build_model(variant_name: str, device: str | torch.device = "cpu") -> FlashOcc:
    """Network for an official config name (or M0/M1/PT/PF), eval mode, uninitialised weights."""
    variant = get_variant(variant_name)
    model = network_class(variant)(variant)
    model.to(device)
    if torch.device(device).type == "cpu":
        model.to_channels_last(True)
    else:
        model.use_channels_last = False
    return model.eval()
