"""flashocc-view: interactive Open3D voxel view of occupancy files, folders or bag topics (desktop).

flashocc-view pred/<token>.npz --gt gts/<scene>/<token>/labels.npz
flashocc-view preds/ --gt gts/ --mask-camera          N/P or arrows: next/previous frame
flashocc-view recorded_bag/ --topic /occupancy/panoptic --color-by instance
flashocc-view preds/ --check                          load and prepare every frame, no window (no Open3D needed)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flashocc_ros.viz.loaders import OccupancyFileError, OccupancySequence, pair_frames
from flashocc_ros.viz.viewer import COLOR_MODES, ViewerState, frame_to_show, prepare_geometry, run_viewer

DEFAULT_TOPIC = "/occupancy/semantic"
DEFAULT_GT_TOPIC = "/occupancy/ground_truth"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flashocc-view",
        description="Interactive 3D voxel viewer (Open3D). Keys: N/Right next, P/Left previous, C class/instance "
        "colours, M camera mask, G prediction/ground truth, Q quit.",
    )
    p.add_argument("input", type=Path, help="prediction .npz / Occ3D labels.npz, a folder of them, or a bag")
    p.add_argument("--gt", type=Path, help="ground truth (file, folder or bag) paired by sample token / stamp")
    p.add_argument("--topic", default=None, help=f"occupancy topic when INPUT is a bag (default {DEFAULT_TOPIC})")
    p.add_argument("--gt-topic", default=None, help=f"topic when --gt is a bag (default {DEFAULT_GT_TOPIC})")
    p.add_argument("--color-by", choices=COLOR_MODES, default="class")
    p.add_argument("--mask-camera", action="store_true", help="start with the camera mask applied")
    p.add_argument("--start", type=int, default=0, help="index of the first frame shown")
    p.add_argument("--check", action="store_true", help="prepare every frame and print a summary; no window")
    return p


def run(args: argparse.Namespace) -> int:
    preds = OccupancySequence.open(args.input, args.topic or DEFAULT_TOPIC)
    gts = OccupancySequence.open(args.gt, args.gt_topic or DEFAULT_GT_TOPIC) if args.gt else None
    pairs = pair_frames(preds, gts)
    if not 0 <= args.start < len(pairs):
        raise ValueError(f"--start {args.start} is outside 0..{len(pairs) - 1}")
    if args.check:
        state = ViewerState(len(pairs), color_by=args.color_by, use_camera_mask=args.mask_camera)
        for i in range(len(pairs)):
            state.index = i
            for show_gt in (False, True) if gts is not None else (False,):
                state.show_ground_truth = show_gt
                frame, mask, title = frame_to_show(pairs, state)
                geometry = prepare_geometry(
                    frame, color_by=state.color_by, use_camera_mask=state.use_camera_mask, mask=mask
                )
                print(f"{title}: {len(geometry)} voxels, colour {geometry.color_mode}", flush=True)
        return 0
    run_viewer(pairs[args.start :], color_by=args.color_by, use_camera_mask=args.mask_camera)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (OccupancyFileError, ValueError, RuntimeError) as exc:
        print(f"flashocc-view: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
