"""FlashOcc (M0, M1) and Panoptic-FlashOcc (PT, PF) networks with the official state_dict layout (SPEC 1, 4-9).

``networks.build_model(name)`` returns an eval-mode module whose ``state_dict()`` keys and shapes equal the official
detector's, so official checkpoints load with ``strict=True``. In eval mode every conv followed by a BatchNorm
runs with the BN folded into the conv (folded copies are non-persistent buffers rebuilt on every
``load_state_dict``/``eval()``; the parameters and the state_dict are untouched); ``train()`` runs the plain
conv -> BN graph.

Entry points:
  * ``forward_tensors(img, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths, mlp_input)``:
    the export/runner interface (ONNX input order of the official TRT path), returns
    ``(occ_logits (1,200,200,16,18),)`` or, for panoptic variants, ``(occ_logits, heatmap, reg, height)``.
  * ``forward_stages(...)``: the same computation returning named intermediates (for parity checks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flashocc_ros.config import NUM_CLASSES, OCC_GRID, ModelVariant
from flashocc_ros.network.geometry import FEATURE_HW, MLP_INPUT_DIM, NUM_CAMERAS, PoolIndices, bev_pool, bev_pool_csr

BN_EPS = 1e-5
ASPP_MID = 96
CENTER_HEAD_CONV = 64
CENTER_HEADS = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2, "heatmap": 10}
CENTER_HEADS_USED = ("reg", "height", "heatmap")


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS)


def _conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=bias)


def _conv1x1(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=bias)


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one conv (eval statistics), computed in float64."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale + bn.bias.double()
    dtype = conv.weight.dtype
    return weight.to(dtype).contiguous(memory_format=_weight_format(conv.weight)), bias.to(dtype)


def _weight_format(w: torch.Tensor) -> torch.memory_format:
    if w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class FoldedConvBN(nn.Module):
    """Base for blocks whose convs are followed by BatchNorms named as siblings (official key layout).

    Subclasses list ``(conv_path, bn_path)`` pairs in ``fold_pairs``; ``conv_bn(x, i)`` runs pair i, folded when
    the folded copy is valid (eval mode), else as conv -> BN.
    """

    fold_pairs: tuple[tuple[str, str], ...] = ()

    def _init_fold(self) -> None:
        self._folded_ready = False
        self._pairs = []
        for i, (c, b) in enumerate(self.fold_pairs):
            self._pairs.append((self.get_submodule(c), self.get_submodule(b)))
            self.register_buffer(f"_fw{i}", None, persistent=False)
            self.register_buffer(f"_fb{i}", None, persistent=False)

    def fold(self) -> None:
        for i, (conv, bn) in enumerate(self._pairs):
            w, b = fold_conv_bn(conv, bn)
            setattr(self, f"_fw{i}", w)
            setattr(self, f"_fb{i}", b)
        self._folded_ready = True

    def unfold(self) -> None:
        for i in range(len(self._pairs)):
            setattr(self, f"_fw{i}", None)
            setattr(self, f"_fb{i}", None)
        self._folded_ready = False

    def conv_bn(self, x: torch.Tensor, i: int) -> torch.Tensor:
        conv, bn = self._pairs[i]
        if self._folded_ready and not self.training:
            return F.conv2d(
                x,
                getattr(self, f"_fw{i}"),
                getattr(self, f"_fb{i}"),
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
            )
        return bn(conv(x))

    def conv_bn_relu(self, x: torch.Tensor, i: int, residual: torch.Tensor | None = None) -> torch.Tensor:
        """relu(conv_bn(x, i) [+ residual]); one fused oneDNN call (conv + add + ReLU post-ops) on the CPU
        inference path, bit-identical to the separate ops."""
        if self._folded_ready and not self.training and _pointwise_fusion_ok(x, residual):
            conv = self._pairs[i][0]
            w, b = getattr(self, f"_fw{i}"), getattr(self, f"_fb{i}")
            geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
            if residual is None:
                return _CONV_POINTWISE(x, w, b, *geometry, "relu", [], "")
            return _CONV_POINTWISE.binary(x, residual, w, b, *geometry, "add", None, "relu", [], "")
        out = self.conv_bn(x, i)
        if residual is not None:
            out += residual
        return F.relu(out, inplace=True)


_CONV_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
_POINTWISE_FUSION = {"enabled": _CONV_POINTWISE is not None and torch.backends.mkldnn.is_available()}


def _pointwise_fusion_ok(x: torch.Tensor, residual: torch.Tensor | None) -> bool:
    if not _POINTWISE_FUSION["enabled"] or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
        return False
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export() or _is_exporting():
        return False
    cl = torch.channels_last
    return x.is_contiguous(memory_format=cl) and (residual is None or residual.is_contiguous(memory_format=cl))


# --------------------------------------------------------------------------------------------------------------
# Image encoder: mmdet ResNet-50 (style pytorch, out_indices (2, 3)) + CustomFPN
# --------------------------------------------------------------------------------------------------------------


class Bottleneck(FoldedConvBN):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: bool = False) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = _bn(planes)
        self.conv3 = _conv1x1(planes, cout)
        self.bn3 = _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(_conv1x1(cin, cout, stride), _bn(cout)) if downsample else None
        pairs = [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]
        if downsample:
            pairs.append(("downsample.0", "downsample.1"))
        self.fold_pairs = tuple(pairs)
        self._init_fold()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.conv_bn(x, 3) if self.downsample is not None else x
        out = self.conv_bn_relu(x, 0)
        out = self.conv_bn_relu(out, 1)
        return self.conv_bn_relu(out, 2, residual=identity)


class ResNet50(FoldedConvBN):
    fold_pairs = (("conv1", "bn1"),)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for idx, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))):
            layer = [Bottleneck(cin, planes, stride, downsample=True)]
            cin = planes * Bottleneck.expansion
            layer += [Bottleneck(cin, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{idx + 1}", nn.Sequential(*layer))
        self._init_fold()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.conv_bn_relu(x, 0))
        x = self.layer2(self.layer1(x))
        c3 = self.layer3(x)
        c4 = self.layer4(c3)
        return c3, c4


class ConvWithBias(nn.Module):
    """mmcv ConvModule without norm/activation (key ``<name>.conv.*``)."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class CustomFPN(nn.Module):
    """Two 1x1 laterals, nearest top-down add, one 3x3 output conv on the stride-16 level."""

    def __init__(self, out_ch: int = 256) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList([ConvWithBias(1024, out_ch, 1), ConvWithBias(2048, out_ch, 1)])
        self.fpn_convs = nn.ModuleList([ConvWithBias(out_ch, out_ch, 3)])

    def forward(self, c3: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        lat0 = self.lateral_convs[0](c3)
        lat1 = self.lateral_convs[1](c4)
        lat0 = lat0 + F.interpolate(lat1, size=lat0.shape[2:], mode="nearest")
        return self.fpn_convs[0](lat0)


# --------------------------------------------------------------------------------------------------------------
# Depth / context nets
# --------------------------------------------------------------------------------------------------------------


class BasicBlock(FoldedConvBN):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU. ``downsample``: bare conv3x3 with bias (CustomResNet)."""

    fold_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, cin: int, cout: int, stride: int = 1, conv_downsample: bool = False) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = _bn(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _conv3x3(cin, cout, stride, bias=True) if conv_downsample else None
        self._init_fold()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.downsample(x) if self.downsample is not None else x
        out = self.conv_bn_relu(x, 0)
        return self.conv_bn_relu(out, 1, residual=identity)


class LSSViewTransformer(nn.Module):
    """LSSViewTransformer's depth net: one 1x1 conv 256 -> D + C (key ``img_view_transformer.depth_net``)."""

    def __init__(self, num_depth: int, context_ch: int, in_ch: int = 256) -> None:
        super().__init__()
        self.num_depth = num_depth
        self.context_ch = context_ch
        self.depth_net = nn.Conv2d(in_ch, num_depth + context_ch, 1)

    def depth_context(self, feat: torch.Tensor, mlp_input: torch.Tensor | None) -> torch.Tensor:
        return self.depth_net(feat)


class Mlp(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cin, hidden)
        self.fc2 = nn.Linear(hidden, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class SELayer(nn.Module):
    """Gate features with sigmoid(conv_expand(relu(conv_reduce(se)))) where se is the camera MLP output."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(ch, ch, 1, bias=True)
        self.conv_expand = nn.Conv2d(ch, ch, 1, bias=True)

    def forward(self, x: torch.Tensor, se: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.conv_expand(F.relu(self.conv_reduce(se))))
        return x * gate


class ASPPBranch(FoldedConvBN):
    fold_pairs = (("atrous_conv", "bn"),)

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int) -> None:
        super().__init__()
        pad = 0 if kernel == 1 else dilation
        self.atrous_conv = nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False)
        self.bn = _bn(cout)
        self._init_fold()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_bn_relu(x, 0)


class ASPP(FoldedConvBN):
    fold_pairs = (("global_avg_pool.1", "global_avg_pool.2"), ("conv1", "bn1"))

    def __init__(self, cin: int, mid: int = ASPP_MID) -> None:
        super().__init__()
        self.aspp1 = ASPPBranch(cin, mid, 1, 1)
        self.aspp2 = ASPPBranch(cin, mid, 3, 6)
        self.aspp3 = ASPPBranch(cin, mid, 3, 12)
        self.aspp4 = ASPPBranch(cin, mid, 3, 18)
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)), nn.Conv2d(cin, mid, 1, bias=False), _bn(mid), nn.ReLU()
        )
        self.conv1 = nn.Conv2d(mid * 5, cin, 1, bias=False)
        self.bn1 = _bn(cin)
        self._init_fold()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.relu(self.conv_bn(F.adaptive_avg_pool2d(x, 1), 0))
        # bilinear (align_corners) resize of a 1x1 map is an exact broadcast
        pooled = pooled.expand(-1, -1, x.shape[2], x.shape[3])
        cat = torch.cat([self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x), pooled], dim=1)
        return self.conv_bn_relu(cat, 1)  # dropout: identity in eval


class CameraAwareDepthNet(FoldedConvBN):
    """The camera-aware front of the BEVDepth depth nets: reduce conv, BatchNorm of ``mlp_input``, MLP + SE gates
    for the depth and the context branch. Subclasses add their ``depth_conv`` (and anything between) after
    ``_camera_aware_layers`` so that the parameters register in the official state_dict order."""

    def _camera_aware_layers(self, context_ch: int, in_ch: int, mid: int) -> None:
        self.reduce_conv = nn.Sequential(_conv3x3(in_ch, mid, bias=True), _bn(mid), nn.ReLU(inplace=True))
        self.context_conv = nn.Conv2d(mid, context_ch, 1)
        self.bn = nn.BatchNorm1d(MLP_INPUT_DIM, eps=BN_EPS)
        self.depth_mlp = Mlp(MLP_INPUT_DIM, mid, mid)
        self.depth_se = SELayer(mid)
        self.context_mlp = Mlp(MLP_INPUT_DIM, mid, mid)
        self.context_se = SELayer(mid)

    def _depth_and_context(self, x: torch.Tensor, mlp_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(depth-branch features before depth_conv, context features)."""
        cam = self.bn(mlp_input.reshape(-1, mlp_input.shape[-1]))
        x = self.conv_bn_relu(x, 0)
        context = self.context_conv(self.context_se(x, self.context_mlp(cam)[..., None, None]))
        return self.depth_se(x, self.depth_mlp(cam)[..., None, None]), context


class DepthNet(CameraAwareDepthNet):
    """BEVDepth camera-aware depth net (use_dcn False, use_aspp True)."""

    fold_pairs = (("reduce_conv.0", "reduce_conv.1"),)

    def __init__(self, num_depth: int, context_ch: int, in_ch: int = 256, mid: int = 256) -> None:
        super().__init__()
        self._camera_aware_layers(context_ch, in_ch, mid)
        self.depth_conv = nn.Sequential(
            BasicBlock(mid, mid), BasicBlock(mid, mid), BasicBlock(mid, mid), ASPP(mid), nn.Conv2d(mid, num_depth, 1)
        )
        self._init_fold()

    def forward(self, x: torch.Tensor, mlp_input: torch.Tensor) -> torch.Tensor:
        depth, context = self._depth_and_context(x, mlp_input)
        return torch.cat([self.depth_conv(depth), context], dim=1)


class BEVDepthViewTransformer(nn.Module):
    def __init__(self, num_depth: int, context_ch: int, in_ch: int = 256, mid: int = 256) -> None:
        super().__init__()
        self.num_depth = num_depth
        self.context_ch = context_ch
        self.depth_net = DepthNet(num_depth, context_ch, in_ch, mid)

    def depth_context(self, feat: torch.Tensor, mlp_input: torch.Tensor | None) -> torch.Tensor:
        if mlp_input is None:
            raise ValueError("this variant (BEVDepth depth net) needs mlp_input (1, 6, 27)")
        return self.depth_net(feat, mlp_input)


# --------------------------------------------------------------------------------------------------------------
# BEV encoder: CustomResNet + FPN_LSS
# --------------------------------------------------------------------------------------------------------------


class CustomResNet(nn.Module):
    """BEV encoder backbone: three stride-2 stages of two BasicBlocks; ``channels`` default (2, 4, 8) x ``cin``
    (the temporal variants widen the input only: ``cin`` = frames x C_trans, channels (2, 4, 8) x C_trans)."""

    def __init__(self, cin: int, channels: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        chans = list(channels) if channels is not None else [2 * cin, 4 * cin, 8 * cin]
        layers = []
        cur = cin
        for ch in chans:
            layers.append(nn.Sequential(BasicBlock(cur, ch, stride=2, conv_downsample=True), BasicBlock(ch, ch)))
            cur = ch
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class FPNLSS(FoldedConvBN):
    fold_pairs = (("conv.0", "conv.1"), ("conv.3", "conv.4"), ("up2.1", "up2.2"))

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout * 2
        self.conv = nn.Sequential(
            _conv3x3(cin, mid), _bn(mid), nn.ReLU(inplace=True), _conv3x3(mid, mid), _bn(mid), nn.ReLU(inplace=True)
        )
        self.up2 = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            _conv3x3(mid, cout),
            _bn(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 1),
        )
        self._init_fold()

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        low, high = feats[0], feats[2]
        high = F.interpolate(high, size=low.shape[2:], mode="bilinear", align_corners=True)
        x = torch.cat([low, high], dim=1)
        x = self.conv_bn_relu(x, 0)
        x = self.conv_bn_relu(x, 1)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = self.conv_bn_relu(x, 2)
        return self.up2[4](x)


# --------------------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------------------


class OccHead(nn.Module):
    """BEVOCCHead2D(_V2) inference graph: conv3x3+ReLU, permute to (B, Dx, Dy, C), Linear-Softplus-Linear."""

    def __init__(self, ch: int, dz: int = OCC_GRID.shape[2], num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.dz = dz
        self.num_classes = num_classes
        self.final_conv = ConvWithBias(ch, ch, 3)
        self.predicter = nn.Sequential(nn.Linear(ch, ch * 2), nn.Softplus(), nn.Linear(ch * 2, dz * num_classes))

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.final_conv(bev), inplace=True).permute(0, 3, 2, 1)  # (B, Dx, Dy, C)
        bs, dx, dy = x.shape[:3]
        x = self.predicter(x.contiguous())
        return x.view(bs, dx, dy, self.dz, self.num_classes)


class ConvBNReLU(FoldedConvBN):
    """mmcv ConvModule conv(no bias) + BN + ReLU (keys ``conv``, ``bn``)."""

    fold_pairs = (("conv", "bn"),)

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _conv3x3(cin, cout)
        self.bn = _bn(cout)
        self._init_fold()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_bn_relu(x, 0)


class SeparateHead(nn.Module):
    def __init__(self, cin: int = CENTER_HEAD_CONV) -> None:
        super().__init__()
        for name, k in CENTER_HEADS.items():
            setattr(
                self, name, nn.Sequential(ConvBNReLU(cin, CENTER_HEAD_CONV), _conv3x3(CENTER_HEAD_CONV, k, bias=True))
            )

    def forward(self, x: torch.Tensor, names=CENTER_HEADS_USED) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n)(x) for n in names}


class CenternessHead(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.shared_conv = ConvBNReLU(cin, CENTER_HEAD_CONV)
        self.task_heads = nn.ModuleList([SeparateHead()])

    def forward(self, bev: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.task_heads[0](self.shared_conv(bev))


# --------------------------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------------------------


class FlashOcc(nn.Module):
    """BEVDetOCC / BEVDepthPano single-frame inference network (batch 1, six cameras)."""

    def __init__(self, variant: ModelVariant) -> None:
        super().__init__()
        self.variant = variant
        d, c, o = variant.depth_bins, variant.context_channels, variant.bev_channels
        self.img_backbone = ResNet50()
        self.img_neck = CustomFPN()
        if variant.depth_net == "lss":
            self.img_view_transformer = LSSViewTransformer(d, c)
        else:
            self.img_view_transformer = BEVDepthViewTransformer(d, c)
        self.img_bev_encoder_backbone = CustomResNet(c)
        self.img_bev_encoder_neck = FPNLSS(8 * c + 2 * c, o)
        self.occ_head = OccHead(o)
        if variant.panoptic:
            self.aux_centerness_head = CenternessHead(o)
        # "csr": sparse-matrix BEV pooling on CPU (fastest); "gather": index_add (exportable, used when tracing)
        self.bev_pool_mode = "csr"
        self.use_channels_last = True
        self._pool_cache: tuple | None = None

    # ---- folding bookkeeping -------------------------------------------------------------------------------

    def _foldables(self):
        return [m for m in self.modules() if isinstance(m, FoldedConvBN)]

    def refold(self) -> FlashOcc:
        """Rebuild the folded conv+BN copies from the current parameters (done by eval() and load_state_dict)."""
        for m in self._foldables():
            m.fold()
        return self

    def train(self, mode: bool = True) -> FlashOcc:
        super().train(mode)
        for m in self._foldables():
            if mode:
                m.unfold()
            else:
                m.fold()
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if not self.training:
            self.refold()
        return result

    def set_folding(self, enabled: bool) -> FlashOcc:
        """Eval-mode BN folding on/off (off = the literal conv -> BN graph of the official code)."""
        for m in self._foldables():
            m.fold() if enabled and not self.training else m.unfold()
        return self

    def to_channels_last(self, enabled: bool = True) -> FlashOcc:
        fmt = torch.channels_last if enabled else torch.contiguous_format
        self.use_channels_last = enabled
        self.to(memory_format=fmt)
        if not self.training:
            self.refold()
        return self

    # ---- stages -------------------------------------------------------------------------------------------

    def image_features(self, img: torch.Tensor) -> torch.Tensor:
        """(6, 3, 256, 704) normalised images -> (6, 256, 16, 44) CustomFPN features."""
        if self.use_channels_last and img.device.type == "cpu":
            img = img.contiguous(memory_format=torch.channels_last)
        c3, c4 = self.img_backbone(img)
        return self.img_neck(c3, c4)

    def depth_and_context(self, feat: torch.Tensor, mlp_input: torch.Tensor | None):
        vt = self.img_view_transformer
        out = vt.depth_context(feat, mlp_input)
        depth = out[:, : vt.num_depth].softmax(dim=1)
        context = out[:, vt.num_depth : vt.num_depth + vt.context_ch]
        return out, depth, context

    def lss_bev(self, depth: torch.Tensor, context: torch.Tensor, pool) -> torch.Tensor:
        exporting = torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or _is_exporting()
        if self.bev_pool_mode == "csr" and not exporting and depth.device.type == "cpu":
            if not isinstance(pool, PoolIndices):
                pool = self._pool_from_tensors(pool)
            return bev_pool_csr(depth, context, pool)
        return bev_pool(depth, context, pool)

    def _pool_from_tensors(self, pool: tuple) -> PoolIndices:
        """Reuse the PoolIndices (and its cached CSR layout) while the same index tensors are passed in."""
        key = tuple((t.data_ptr(), t.numel()) for t in pool)
        if self._pool_cache is None or self._pool_cache[0] != key:
            self._pool_cache = (key, PoolIndices(*pool))
        return self._pool_cache[1]

    def bev_encoder(self, bev: torch.Tensor) -> torch.Tensor:
        return self.img_bev_encoder_neck(self.img_bev_encoder_backbone(bev))

    def forward_stages(
        self,
        img: torch.Tensor,
        ranks_depth: torch.Tensor,
        ranks_feat: torch.Tensor,
        ranks_bev: torch.Tensor,
        interval_starts: torch.Tensor,
        interval_lengths: torch.Tensor,
        mlp_input: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Full forward returning named intermediates: img_neck, depth_net_out, depth_prob, lss_bev, bev_encoder,
        occ_logits and, for panoptic variants, heatmap / reg / height (raw center-head maps)."""
        if img.dim() == 5:
            img = img[0]
        if tuple(img.shape[:2]) != (NUM_CAMERAS, 3):
            raise ValueError(f"img: expected (6, 3, 256, 704), got {tuple(img.shape)}")
        feat = self.image_features(img)
        if tuple(feat.shape[2:]) != FEATURE_HW:
            raise ValueError(f"img: spatial size {tuple(img.shape[2:])} does not give the {FEATURE_HW} feature map")
        out, depth, context = self.depth_and_context(feat, mlp_input)
        pool = (ranks_bev, ranks_depth, ranks_feat, interval_starts, interval_lengths)
        bev = self.lss_bev(depth, context, pool)
        if not self.use_channels_last or bev.device.type != "cpu":
            bev = bev.contiguous()
        bev_enc = self.bev_encoder(bev)
        stages = dict(img_neck=feat, depth_net_out=out, depth_prob=depth, lss_bev=bev, bev_encoder=bev_enc)
        stages["occ_logits"] = self.occ_head(bev_enc)
        if self.variant.panoptic:
            stages.update(self.aux_centerness_head(bev_enc))
        return stages

    def forward_tensors(
        self,
        img: torch.Tensor,
        ranks_depth: torch.Tensor,
        ranks_feat: torch.Tensor,
        ranks_bev: torch.Tensor,
        interval_starts: torch.Tensor,
        interval_lengths: torch.Tensor,
        mlp_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Export/runner interface: (occ_logits,) or (occ_logits, heatmap, reg, height) for panoptic variants."""
        s = self.forward_stages(img, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths, mlp_input)
        if self.variant.panoptic:
            return s["occ_logits"], s["heatmap"], s["reg"], s["height"]
        return (s["occ_logits"],)

    forward = forward_tensors


def _is_exporting() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_exporting") and compiler.is_exporting())


def occupancy_labels(occ_logits: torch.Tensor) -> torch.Tensor:
    """softmax then argmax over classes (first maximum wins), like the official get_occ -> uint8 [ix, iy, iz]."""
    logits = occ_logits[0] if occ_logits.dim() == 5 else occ_logits
    return logits.softmax(-1).argmax(-1).to(torch.uint8)
