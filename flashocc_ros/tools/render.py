"""flashocc-render: headless pictures and videos of occupancy (prediction vs ground truth).

flashocc-render pred/<token>.npz --gt gts/<scene>/<token>/labels.npz -o cmp.png --mask-camera
flashocc-render preds/ --gt gts/ -o out_dir/               one PNG per frame (<token>.png)
flashocc-render preds/ --gt gts/ -o video.mp4 --nusc-root data/nuscenes   cameras above the occupancy
flashocc-render recorded_bag/ --topic /occupancy/semantic --gt input_bag/ -o video.gif
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flashocc_ros.topics import GROUND_TRUTH_TOPIC, SEMANTIC_TOPIC
from flashocc_ros.viz.loaders import (
    NuScenesImages,
    OccupancyFileError,
    OccupancyFrame,
    OccupancySequence,
    pair_frames,
)
from flashocc_ros.viz.render import (
    RENDERERS,
    VIDEO_SUFFIXES,
    VIEWS,
    RenderError,
    VideoItem,
    compose_comparison,
    render_video,
    save_png,
)

DEFAULT_TOPIC = SEMANTIC_TOPIC
DEFAULT_GT_TOPIC = GROUND_TRUTH_TOPIC


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flashocc-render",
        description="Render occupancy to PNG (bird's-eye + 3D view, prediction | ground truth, legend) or to an "
        "MP4/GIF with the six camera images above. No display needed.",
    )
    p.add_argument("input", type=Path, help="prediction .npz / Occ3D labels.npz, a folder of them, or a bag")
    p.add_argument("--gt", type=Path, help="ground truth: labels.npz, a folder (e.g. Occ3D gts/) or a bag")
    p.add_argument("-o", "--out", type=Path, default=Path("render.png"), help=".png, a folder, .mp4 or .gif")
    p.add_argument("--topic", default=None, help=f"occupancy topic when INPUT is a bag (default {DEFAULT_TOPIC})")
    p.add_argument("--gt-topic", default=None, help=f"topic when --gt is a bag (default {DEFAULT_GT_TOPIC})")
    p.add_argument("--views", default="bev,3d", help=f"comma-separated subset of {','.join(VIEWS)}")
    p.add_argument("--mask-camera", action="store_true", help="hide voxels outside the ground truth mask_camera")
    p.add_argument("--color-by", choices=("class", "instance"), default="class", help="instance: panoptic ids")
    p.add_argument("--renderer", choices=RENDERERS, default="auto", help="3D view renderer (auto: Open3D if it works)")
    p.add_argument("--fps", type=float, default=2.0, help="video frame rate (nuScenes keyframes are 2 Hz)")
    p.add_argument("--nusc-root", type=Path, help="nuScenes dataroot: camera images of each sample for videos")
    p.add_argument("--nusc-version", default="v1.0-mini")
    p.add_argument("--limit", type=int, default=0, help="render at most this many frames (0 = all)")
    return p


def _mask_for(pred: OccupancyFrame, gt: OccupancyFrame | None):
    if gt is not None and gt.mask_camera is not None:
        return gt.mask_camera
    return pred.mask_camera


def _title(pred: OccupancyFrame, gt: OccupancyFrame | None, masked: bool) -> str:
    parts = [pred.name, pred.kind.replace("_", " ")]
    if gt is not None:
        parts.append("vs ground truth")
    if masked:
        parts.append("(camera mask)")
    return "  ".join(parts)


def run(args: argparse.Namespace) -> int:
    views = tuple(v.strip() for v in args.views.split(",") if v.strip())
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise ValueError(f"--views: {args.views!r}; choose from {', '.join(VIEWS)}")
    preds = OccupancySequence.open(args.input, args.topic or DEFAULT_TOPIC)
    gts = OccupancySequence.open(args.gt, args.gt_topic or DEFAULT_GT_TOPIC) if args.gt else None
    pairs = pair_frames(preds, gts)
    if args.limit > 0:
        pairs = pairs[: args.limit]
    if gts is not None:
        missing = sum(1 for _, g in pairs if g is None)
        if missing:
            print(f"flashocc-render: {missing} of {len(pairs)} frames have no ground truth in {args.gt}", flush=True)
    images = NuScenesImages(args.nusc_root, args.nusc_version) if args.nusc_root else None
    instance = args.color_by == "instance"
    warned_mask = False

    def item(pred: OccupancyFrame, gt: OccupancyFrame | None) -> VideoItem:
        nonlocal warned_mask
        mask = _mask_for(pred, gt) if args.mask_camera else None
        if args.mask_camera and mask is None and not warned_mask:
            print("flashocc-render: --mask-camera: no mask_camera available, rendering unmasked", flush=True)
            warned_mask = True
        cams = pred.camera_images()
        if cams is None and gt is not None:
            cams = gt.camera_images()
        if cams is None and images is not None:
            cams = images.images(pred.name)
        return VideoItem(
            pred=pred.semantic,
            gt=gt.semantic if gt is not None else None,
            images=cams,
            mask=mask,
            title=_title(pred, gt, mask is not None),
            pred_panoptic=pred.panoptic if instance else None,
            gt_panoptic=gt.panoptic if (instance and gt is not None) else None,
        )

    out: Path = args.out
    suffix = out.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        result = render_video((item(p, g) for p, g in pairs), out, fps=args.fps, views=views, renderer=args.renderer)
        print(f"flashocc-render: {result.message}", flush=True)
        print(f"flashocc-render: wrote {result.path} ({result.frames} frames)", flush=True)
        return 0
    if suffix == ".png" and len(pairs) > 1:
        raise ValueError(f"{args.input} has {len(pairs)} frames: give a folder, .mp4 or .gif as --out, or --limit 1")
    message = ""
    written = []
    for pred, gt in pairs:
        it = item(pred, gt)
        image, _, _, message = compose_comparison(
            it.pred,
            it.gt,
            mask=it.mask,
            title=it.title,
            views=views,
            renderer=args.renderer,
            pred_panoptic=it.pred_panoptic,
            gt_panoptic=it.gt_panoptic,
        )
        target = out if suffix == ".png" else out / f"{pred.name}.png"
        written.append(save_png(image, target))
    print(f"flashocc-render: {message}", flush=True)
    where = written[0] if len(written) == 1 else f"{len(written)} images in {out}"
    print(f"flashocc-render: wrote {where}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (OccupancyFileError, RenderError, ValueError) as exc:
        print(f"flashocc-render: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
