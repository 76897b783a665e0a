"""Temporal Panoptic-FlashOcc networks (BEVDepth4DPano: depth4d-pano, 2 frames; longterm8f-pano, 9 frames),
official state_dict layout (SPEC4D 1, 3, 4).

Built from the single-frame blocks of ``model.py``; only the frame loop, ``pre_process_net`` and the fusion are new.
At test time the official detector lifts EVERY frame with its own camera -> current-key-ego transform
(``align_after_view_transfromation=False``), so the previous frames' BEV comes out already in the current grid and
the fused BEV is the channel concatenation of the per-frame ``pre_process_net`` outputs (no warp). Per frame:

    image encoder (ResNet-50 + CustomFPN 512)      -- depends on the images only (what a stream keeps)
    DepthNet with the CURRENT frame's mlp_input   -- depends on the current frame's key-ego calibration
    BEVPoolv2 with the frame's own geometry        -- depends on the frame's pose relative to the current ego
    pre_process_net (one BasicBlock)

then ``cat([cur, prev1, ..., prevN])`` -> BEV encoder -> occupancy head + centerness head, as in the single-frame
model. ``forward_frames`` runs all frames at once (the official test path); the streaming path
(``temporal.TemporalPipeline``) calls the same stage methods with the image features of previous frames kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from flashocc_ros.config import ModelVariant, get_variant
from flashocc_ros.geometry import (
    FEATURE_HW,
    NUM_CAMERAS,
    PoolIndices,
    compute_pool_indices,
    make_mlp_input,
    sensor_to_key_ego,
)
from flashocc_ros.model import (
    FPNLSS,
    BasicBlock,
    BEVDepthViewTransformer,
    CenternessHead,
    CustomFPN,
    CustomResNet,
    FlashOcc,
    OccHead,
    ResNet50,
)


class PreProcessNet(nn.Module):
    """``pre_process_net``: CustomResNet(C, num_layer [1], stride 1) = one BasicBlock with a conv3x3 shortcut."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(BasicBlock(ch, ch, stride=1, conv_downsample=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class FlashOcc4D(FlashOcc):
    """BEVDepth4DPano inference network (batch 1, six cameras, ``variant.bev_frames`` fused frames)."""

    def __init__(self, variant: ModelVariant) -> None:
        nn.Module.__init__(self)
        if not variant.temporal or variant.depth_net != "bevdepth" or variant.stereo:
            raise ValueError(f"FlashOcc4D: {variant.name} is not a BEVDepth4D variant")
        self.variant = variant
        d, c, o, neck = variant.depth_bins, variant.context_channels, variant.bev_channels, variant.neck_channels
        # registration order = official state_dict order (pre_process_net after the BEV encoder, before the heads)
        self.img_backbone = ResNet50()
        self.img_neck = CustomFPN(neck)
        self.img_view_transformer = BEVDepthViewTransformer(d, c, in_ch=neck, mid=neck)
        self.img_bev_encoder_backbone = CustomResNet(c * variant.bev_frames, channels=(2 * c, 4 * c, 8 * c))
        self.img_bev_encoder_neck = FPNLSS(8 * c + 2 * c, o)
        self.pre_process_net = PreProcessNet(c)
        self.occ_head = OccHead(o)
        if variant.panoptic:
            self.aux_centerness_head = CenternessHead(o)
        self.bev_pool_mode = "csr"
        self.use_channels_last = True
        self._pool_cache = None

    # ---- per-frame stages --------------------------------------------------------------------------------

    def encode_frame(self, img: torch.Tensor) -> torch.Tensor:
        """(6, 3, 256, 704) images of one frame -> (6, C_neck, 16, 44) image features (pose independent)."""
        if img.dim() == 5:
            img = img[0]
        if tuple(img.shape[:2]) != (NUM_CAMERAS, 3):
            raise ValueError(f"img: expected (6, 3, 256, 704) per frame, got {tuple(img.shape)}")
        feat = self.image_features(img)
        if tuple(feat.shape[2:]) != FEATURE_HW:
            raise ValueError(f"img: spatial size {tuple(img.shape[2:])} does not give the {FEATURE_HW} feature map")
        return feat

    def depth_frame(self, feat: torch.Tensor, mlp_input: torch.Tensor):
        """(depth_net_out, depth softmax, context) of one frame's features with the key frame's mlp_input."""
        return self.depth_and_context(feat, mlp_input)

    def bev_frame(self, depth: torch.Tensor, context: torch.Tensor, pool: PoolIndices) -> tuple:
        """(LSS BEV (1, C, 200, 200), pre_process_net output) of one frame lifted with its own pool indices."""
        bev = self.lss_bev(depth, context, pool)
        if not self.use_channels_last or bev.device.type != "cpu":
            bev = bev.contiguous()
        return bev, self.pre_process_net(bev)

    def fuse(self, frame_bevs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-frame pre_process outputs, given current first ([cur, prev1, ...], BEVDepth4D order)."""
        if len(frame_bevs) != self.variant.bev_frames:
            raise ValueError(f"{self.variant.name} fuses {self.variant.bev_frames} frames, got {len(frame_bevs)}")
        return torch.cat(list(frame_bevs), dim=1)

    def head(self, fused: torch.Tensor) -> dict[str, torch.Tensor]:
        """BEV encoder + occupancy head (+ raw centre-head maps) on the fused BEV."""
        bev_enc = self.bev_encoder(fused)
        out = {"bev_encoder": bev_enc, "occ_logits": self.occ_head(bev_enc)}
        if self.variant.panoptic:
            out.update(self.aux_centerness_head(bev_enc))
        return out

    def forward_stages(self, *args, **kwargs):
        raise TypeError(f"{self.variant.name} is temporal: use forward_frames or temporal.TemporalPipeline")

    forward_tensors = forward_stages

    # ---- all frames at once (official test path) ---------------------------------------------------------

    def forward_frames(
        self, imgs: torch.Tensor, pools: Sequence[PoolIndices], mlp_input: torch.Tensor
    ) -> dict[str, object]:
        """``imgs`` (F, 6, 3, 256, 704) frame-major (frame 0 = current), ``pools`` F pool indices (each frame
        lifted into the current key ego), ``mlp_input`` (1, 6, 27) of the current frame. Returns the head outputs
        plus per-frame lists ``img_neck``, ``depth_net_out``, ``depth_prob``, ``lss_bev``, ``pre_process`` and
        ``bev_fused``."""
        n = self.variant.bev_frames
        if imgs.shape[0] != n or len(pools) != n:
            raise ValueError(f"{self.variant.name}: expected {n} frames, got {imgs.shape[0]} images / {len(pools)}")
        stages: dict[str, object] = {k: [] for k in ("img_neck", "depth_net_out", "depth_prob", "lss_bev")}
        pre = []
        for k in range(n):
            feat = self.encode_frame(imgs[k])
            out, depth, context = self.depth_frame(feat, mlp_input)
            bev, pp = self.bev_frame(depth, context, pools[k])
            for name, t in zip(("img_neck", "depth_net_out", "depth_prob", "lss_bev"), (feat, out, depth, bev)):
                stages[name].append(t)
            pre.append(pp)
        stages["pre_process"] = pre
        stages["bev_fused"] = self.fuse(pre)
        stages.update(self.head(stages["bev_fused"]))
        return stages

    forward = forward_frames


# --------------------------------------------------------------------------------------------------------------
# Multi-frame geometry (SPEC4D 2-3)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TemporalGeometry:
    sensor2keyegos: np.ndarray  # (F, 6, 4, 4) float32, every frame's cameras -> current key ego
    pools: list[PoolIndices]  # per frame
    mlp_input: torch.Tensor  # (1, 6, 27), the current frame's (shared by every frame)


def split_inputs(inputs: dict, num_frames: int) -> dict[str, np.ndarray]:
    """IN.npz layout of make_inputs_4d (imgs camera-major (1, 6F, ...), matrices frame-major) -> frame-major
    arrays: imgs (F, 6, 3, H, W), sensor2egos / ego2globals (F, 6, 4, 4), intrins / post_rots (F, 6, 3, 3),
    post_trans (F, 6, 3), bda (3, 3)."""
    f = int(num_frames)
    imgs = np.asarray(inputs["imgs"], dtype=np.float32)
    if imgs.ndim != 5 or imgs.shape[:2] != (1, NUM_CAMERAS * f):
        raise ValueError(f"imgs: expected (1, {NUM_CAMERAS * f}, 3, H, W) for {f} frames, got {imgs.shape}")
    out = {"imgs": imgs[0].reshape(NUM_CAMERAS, f, *imgs.shape[2:]).transpose(1, 0, 2, 3, 4)}
    for key, tail in (
        ("sensor2egos", (4, 4)),
        ("ego2globals", (4, 4)),
        ("intrins", (3, 3)),
        ("post_rots", (3, 3)),
        ("post_trans", (3,)),
    ):
        a = np.asarray(inputs[key], dtype=np.float32)
        if a.shape != (1, NUM_CAMERAS * f, *tail):
            raise ValueError(f"{key}: expected {(1, NUM_CAMERAS * f, *tail)} for {f} frames, got {a.shape}")
        out[key] = a[0].reshape(f, NUM_CAMERAS, *tail)
    out["bda"] = np.asarray(inputs.get("bda", np.eye(3)), dtype=np.float32).reshape(3, 3)
    return out


def frame_geometry(variant, sensor2ego, ego2global, key_ego2global, intrins, post_rot, post_tran, bda):
    """(sensor2keyego (6,4,4), PoolIndices) of one frame lifted into the key ego ``key_ego2global`` (4, 4)."""
    s2ke = sensor_to_key_ego(sensor2ego, ego2global, key_ego2global=key_ego2global)
    return s2ke, compute_pool_indices(variant, s2ke, intrins, post_rot, post_tran, bda)


def temporal_geometry(variant, frames: dict[str, np.ndarray]) -> TemporalGeometry:
    """Geometry of all frames of ``split_inputs`` output: key ego = frame 0's CAM_FRONT_LEFT ego; every frame uses
    the CURRENT frame's intrinsics / post-augmentation (the official pipeline repeats them)."""
    v = get_variant(variant) if isinstance(variant, str) else variant
    key = frames["ego2globals"][0, 0]
    geo = (frames["intrins"][0], frames["post_rots"][0], frames["post_trans"][0], frames["bda"])
    s2kes, pools = [], []
    for k in range(v.bev_frames):
        s2ke, pool = frame_geometry(v, frames["sensor2egos"][k], frames["ego2globals"][k], key, *geo)
        s2kes.append(s2ke)
        pools.append(pool)
    mlp = make_mlp_input(s2kes[0], *geo)
    return TemporalGeometry(np.stack(s2kes), pools, mlp)
