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

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flashocc_ros.config import ModelVariant, get_variant
from flashocc_ros.network.geometry import (
    FEATURE_HW,
    NUM_CAMERAS,
    PoolIndices,
    compute_pool_indices,
    make_frustum,
    make_mlp_input,
    sensor_to_key_ego,
)
from flashocc_ros.network.model import (
    ASPP,
    FPNLSS,
    BasicBlock,
    BEVDepthViewTransformer,
    CameraAwareDepthNet,
    CenternessHead,
    CustomFPN,
    CustomResNet,
    FlashOcc,
    OccHead,
    ResNet50,
    _bn,
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


def frame_geometry(variant, sensor2ego, ego2global, key_ego2global, intrins, post_rot, post_tran, bda, history=False):
    """(sensor2keyego (6,4,4), PoolIndices) of one frame lifted into the key ego ``key_ego2global`` (4, 4).

    A ``history`` frame that puts no frustum point inside the current grid (the vehicle drove > ~85 m since) lifts
    to an all-zero BEV, as in the official voxel pooling, with a RuntimeWarning; for the current frame it is an
    error (the calibration is broken)."""
    s2ke = sensor_to_key_ego(sensor2ego, ego2global, key_ego2global=key_ego2global)
    pool = compute_pool_indices(variant, s2ke, intrins, post_rot, post_tran, bda, allow_empty=history)
    if pool.num_points == 0:
        warnings.warn(
            "a history frame has no frustum point inside the current BEV grid: its BEV is zeros",
            RuntimeWarning,
            stacklevel=2,
        )
    return s2ke, pool


def temporal_geometry(variant, frames: dict[str, np.ndarray]) -> TemporalGeometry:
    """Geometry of all frames of ``split_inputs`` output: key ego = frame 0's CAM_FRONT_LEFT ego; every frame uses
    the CURRENT frame's intrinsics / post-augmentation (the official pipeline repeats them)."""
    v = get_variant(variant) if isinstance(variant, str) else variant
    key = frames["ego2globals"][0, 0]
    geo = (frames["intrins"][0], frames["post_rots"][0], frames["post_trans"][0], frames["bda"])
    s2kes, pools = [], []
    for k in range(v.bev_frames):
        s2ke, pool = frame_geometry(v, frames["sensor2egos"][k], frames["ego2globals"][k], key, *geo, history=k > 0)
        s2kes.append(s2ke)
        pools.append(pool)
    mlp = make_mlp_input(s2kes[0], *geo)
    return TemporalGeometry(np.stack(s2kes), pools, mlp)


def curr_to_adj_sensor(sensor2egos: np.ndarray, ego2globals: np.ndarray) -> np.ndarray:
    """(F-1, 6, 4, 4) float32: frame-k camera -> frame-(k+1) camera (same camera), SPEC4D 3:
    ``inv(e2g[k+1] @ s2e[k+1]) @ e2g[k] @ s2e[k]`` in float64 from the float32 inputs."""
    s2e = torch.from_numpy(np.asarray(sensor2egos, dtype=np.float32)).double()
    e2g = torch.from_numpy(np.asarray(ego2globals, dtype=np.float32)).double()
    adj = torch.inverse(e2g[1:] @ s2e[1:])
    return (adj @ e2g[:-1] @ s2e[:-1]).float().numpy()


# --------------------------------------------------------------------------------------------------------------
# 4D-stereo (BEVStereo4DOCC, flashocc-r50-4d-stereo; SPEC4D 5)
# --------------------------------------------------------------------------------------------------------------

STEREO_STRIDE = 4
STEREO_GROUP = 4  # feature channels compared per grid_sample
STEREO_INVALID_BIAS = 5.0


class ShortcutBasicBlock(BasicBlock):
    """BasicBlock whose shortcut is a 1x1 conv with bias (the stereo DepthNet's first block, 344 -> 256)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout)
        self.downsample = nn.Conv2d(cin, cout, 1, bias=True)


class StereoDepthNet(CameraAwareDepthNet):
    """BEVDepth DepthNet with the stereo cost volume (``stereo=True``): the cost volume goes through
    ``cost_volumn_net`` (two stride-2 conv+BN, no activation) and is concatenated after the depth SE features."""

    fold_pairs = (
        ("reduce_conv.0", "reduce_conv.1"),
        ("cost_volumn_net.0", "cost_volumn_net.1"),
        ("cost_volumn_net.2", "cost_volumn_net.3"),
    )

    def __init__(self, num_depth: int, context_ch: int, in_ch: int = 256, mid: int = 256) -> None:
        super().__init__()
        self._camera_aware_layers(context_ch, in_ch, mid)
        d = num_depth
        self.cost_volumn_net = nn.Sequential(nn.Conv2d(d, d, 3, 2, 1), _bn(d), nn.Conv2d(d, d, 3, 2, 1), _bn(d))
        self.depth_conv = nn.Sequential(
            ShortcutBasicBlock(mid + d, mid),
            BasicBlock(mid, mid),
            BasicBlock(mid, mid),
            ASPP(mid),
            nn.Conv2d(mid, d, 1),
        )
        self._init_fold()

    def cost_volume_features(self, cost_volume: torch.Tensor) -> torch.Tensor:
        """(6, D, 64, 176) softmax cost volume -> (6, D, 16, 44)."""
        return self.conv_bn(self.conv_bn(cost_volume, 1), 2)

    def forward(self, x: torch.Tensor, mlp_input: torch.Tensor, cv_features: torch.Tensor) -> torch.Tensor:
        depth, context = self._depth_and_context(x, mlp_input)
        depth = self.depth_conv(torch.cat([depth, cv_features.to(depth.dtype)], dim=1))
        return torch.cat([depth, context], dim=1)


class StereoViewTransformer(nn.Module):
    def __init__(self, num_depth: int, context_ch: int) -> None:
        super().__init__()
        self.num_depth = num_depth
        self.context_ch = context_ch
        self.depth_net = StereoDepthNet(num_depth, context_ch)


def stereo_grid(frustum, k2s, intrins, post_rot, post_tran) -> torch.Tensor:
    """(6, D*64, 176, 2) grid_sample grid: the current camera's stride-4 frustum (SID depths) moved by ``k2s``
    (current camera -> previous camera) and projected into the previous image, normalised to [-1, 1];
    points behind the camera (z < 1e-3) -> (-2, -2). The official gen_grid operations in their order, B = 1."""
    b, n = 1, NUM_CAMERAS
    d, h, w, _ = frustum.shape
    hi, wi = h * STEREO_STRIDE, w * STEREO_STRIDE
    intrins = intrins.view(b, n, 3, 3)
    post_rot = post_rot.view(b, n, 3, 3)
    post_tran = post_tran.view(b, n, 3)
    k2s = k2s.view(b, n, 4, 4)
    points = frustum - post_tran.view(b, n, 1, 1, 1, 3)
    points = torch.inverse(post_rot).view(b, n, 1, 1, 1, 3, 3).matmul(points.unsqueeze(-1))
    points = torch.cat((points[..., :2, :] * points[..., 2:3, :], points[..., 2:3, :]), 5)
    rots = k2s[:, :, :3, :3].contiguous()
    trans = k2s[:, :, :3, 3].contiguous()
    combine = rots.matmul(torch.inverse(intrins))
    points = combine.view(b, n, 1, 1, 1, 3, 3).matmul(points)
    points += trans.view(b, n, 1, 1, 1, 3, 1)
    neg_mask = points[..., 2, 0] < 1e-3
    points = intrins.view(b, n, 1, 1, 1, 3, 3).matmul(points)
    points = points[..., :2, :] / points[..., 2:3, :]
    points = post_rot[..., :2, :2].view(b, n, 1, 1, 1, 2, 2).matmul(points).squeeze(-1)
    points += post_tran[..., :2].view(b, n, 1, 1, 1, 2)
    px = points[..., 0] / (wi - 1.0) * 2.0 - 1.0
    py = points[..., 1] / (hi - 1.0) * 2.0 - 1.0
    px[neg_mask] = -2
    py[neg_mask] = -2
    return torch.stack([px, py], dim=-1).view(b * n, d * h, w, 2)


def stereo_cost_volume(curr: torch.Tensor, prev: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """softmax(-cost) over the D depth bins, (6, D, 64, 176): per group of 4 channels, |curr - prev warped to each
    depth hypothesis| summed; cells whose warped (last group, channel 0) feature is exactly 0 get +5.
    The official ``(curr.unsqueeze(2) - warped).abs().sum(dim=1)`` per group is evaluated channel by channel into
    preallocated buffers, summing in the same order (bit-identical, tested; about half the memory traffic)."""
    n, c, h, w = curr.shape
    d = grid.shape[1] // h
    curr = curr.contiguous()
    prev = prev.contiguous()
    cost = part = tmp = warped = None
    for g in range(c // STEREO_GROUP):
        sl = slice(g * STEREO_GROUP, (g + 1) * STEREO_GROUP)
        warped = F.grid_sample(prev[:, sl], grid, align_corners=True, padding_mode="zeros").view(n, -1, d, h, w)
        if part is None:
            part = torch.empty_like(warped[:, 0])
            tmp = torch.empty_like(part)
        for j in range(STEREO_GROUP):
            ch = curr[:, g * STEREO_GROUP + j].unsqueeze(1)
            if j == 0:
                torch.sub(ch, warped[:, 0], out=part).abs_()
            else:
                part.add_(torch.sub(ch, warped[:, j], out=tmp).abs_())
        cost = part.clone() if cost is None else cost.add_(part)
    invalid = warped[:, 0] == 0
    cost[invalid] = cost[invalid] + STEREO_INVALID_BIAS
    return (-cost).softmax(dim=1)


class FlashOccStereo4D(FlashOcc4D):
    """BEVStereo4DOCC inference network: frames [cur, prev1] fused (in the order [prev1, cur]), frame 2 (the
    keyframe before prev1) only as the stereo reference of prev1."""

    def __init__(self, variant: ModelVariant) -> None:
        nn.Module.__init__(self)
        if not (variant.temporal and variant.stereo):
            raise ValueError(f"FlashOccStereo4D: {variant.name} is not a 4D-stereo variant")
        self.variant = variant
        d, c, o = variant.depth_bins, variant.context_channels, variant.bev_channels
        self.img_backbone = ResNet50()
        self.img_neck = CustomFPN(variant.neck_channels)
        self.img_view_transformer = StereoViewTransformer(d, c)
        self.img_bev_encoder_backbone = CustomResNet(c * variant.bev_frames, channels=(2 * c, 4 * c, 8 * c))
        self.img_bev_encoder_neck = FPNLSS(8 * c + 2 * c, o)
        self.pre_process_net = PreProcessNet(c)
        self.occ_head = OccHead(o)
        self.bev_pool_mode = "csr"
        self.use_channels_last = True
        self._pool_cache = None
        self.cv_frustum = make_frustum(variant, stride=STEREO_STRIDE)

    def _stem_layer1(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() == 5:
            img = img[0]
        if tuple(img.shape[:2]) != (NUM_CAMERAS, 3):
            raise ValueError(f"img: expected (6, 3, 256, 704) per frame, got {tuple(img.shape)}")
        if self.use_channels_last and img.device.type == "cpu":
            img = img.contiguous(memory_format=torch.channels_last)
        bb = self.img_backbone
        return bb.layer1(bb.maxpool(bb.conv_bn_relu(img, 0)))

    def stereo_feature(self, img: torch.Tensor) -> torch.Tensor:
        """(6, 256, 64, 176) layer1 feature only (the extra reference frame)."""
        return self._stem_layer1(img)

    def encode_frame_stereo(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CustomFPN features (6, 256, 16, 44), layer1 stereo feature (6, 256, 64, 176)) of one frame."""
        stereo = self._stem_layer1(img)
        bb = self.img_backbone
        c3 = bb.layer3(bb.layer2(stereo))
        c4 = bb.layer4(c3)
        return self.img_neck(c3, c4), stereo

    def encode_frame(self, img: torch.Tensor) -> torch.Tensor:
        return self.encode_frame_stereo(img)[0]

    def cost_volume(self, curr, prev, k2s, intrins, post_rot, post_tran) -> torch.Tensor:
        """Softmax cost volume of frame features ``curr`` against the previous keyframe's ``prev``."""
        dev = curr.device

        def t(a):
            return torch.as_tensor(np.asarray(a, dtype=np.float32)).to(dev)

        grid = stereo_grid(self.cv_frustum.to(dev), t(k2s), t(intrins), t(post_rot), t(post_tran))
        return stereo_cost_volume(curr.float(), prev.float(), grid.to(curr.dtype))

    def cost_volume_features(self, cost_volume: torch.Tensor) -> torch.Tensor:
        return self.img_view_transformer.depth_net.cost_volume_features(cost_volume)

    def depth_frame(self, feat: torch.Tensor, mlp_input: torch.Tensor, cv_features: torch.Tensor | None = None):
        if cv_features is None:
            raise ValueError("the 4D-stereo depth net needs the frame's cost-volume features")
        vt = self.img_view_transformer
        out = vt.depth_net(feat, mlp_input, cv_features)
        depth = out[:, : vt.num_depth].softmax(dim=1)
        context = out[:, vt.num_depth : vt.num_depth + vt.context_ch]
        return out, depth, context

    def fuse(self, frame_bevs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Given current first; BEVStereo4D processes the frames oldest first, so the fused order is [prev1, cur]."""
        return super().fuse(list(reversed(list(frame_bevs))))

    def forward_frames(self, imgs, pools, mlp_input, curr2adj=None, intrins=None, post_rot=None, post_tran=None):
        """``imgs`` (3, 6, 3, 256, 704) frame-major; ``pools`` of frames 0 and 1; ``curr2adj`` (2, 6, 4, 4);
        intrins / post_rot / post_tran (6, ...) of the current frame (repeated for every frame officially)."""
        if imgs.shape[0] != self.variant.num_frames or len(pools) != self.variant.bev_frames:
            raise ValueError(f"{self.variant.name}: expected 3 frames of images and 2 pool indices")
        names = ("img_neck", "stereo_feat", "cost_volume", "cv_features", "depth_net_out", "depth_prob", "lss_bev")
        stages: dict[str, object] = {k: [None, None] for k in names}
        stages["stereo_feat"] = [None, None, self.stereo_feature(imgs[2])]
        pre = [None, None]
        for k in (1, 0):  # oldest first, as the official loop
            feat, stereo = self.encode_frame_stereo(imgs[k])
            cv = self.cost_volume(stereo, stages["stereo_feat"][k + 1], curr2adj[k], intrins, post_rot, post_tran)
            cvf = self.cost_volume_features(cv)
            out, depth, context = self.depth_frame(feat, mlp_input, cvf)
            bev, pre[k] = self.bev_frame(depth, context, pools[k])
            for name, value in zip(names, (feat, stereo, cv, cvf, out, depth, bev)):
                stages[name][k] = value
        stages["pre_process"] = pre
        stages["bev_fused"] = self.fuse(pre)
        stages.update(self.head(stages["bev_fused"]))
        return stages

    forward = forward_frames
