"""flashocc-eval: Occ3D mIoU, RayIoU and RayPQ of prediction files (or a recorded bag) against Occ3D ground truth.

  flashocc-eval miou   --pred-dir preds --gt-dir data/nuscenes/gts
  flashocc-eval all    --pred-dir preds --gt-dir data/nuscenes/occ3d_panoptic --dataroot data/nuscenes \\
                       --version v1.0-trainval --json result.json --plot per_class.png --jobs 2
  flashocc-eval rayiou --pred-bag run1 --source-bag nusc_val --gt-dir data/nuscenes/gts --dataroot data/nuscenes

Ray metrics need the nuScenes tables (--dataroot/--version) for the lidar poses. ``all`` = mIoU + RayIoU, plus
RayPQ when the predictions carry instance ids (``inst``) and the ground truth carries ``instances``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from flashocc_ros.config import KEY_CAMERA
from flashocc_ros.metrics import evaluation as ev
from flashocc_ros.metrics.miou import MASK_MODES

CHOICES = ("miou", "rayiou", "raypq", "all")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flashocc-eval", description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("metric", choices=CHOICES, help="which metric(s) to compute")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pred-dir", type=Path, help="folder of <sample_token>.npz prediction files (pred[, inst])")
    src.add_argument("--pred-bag", type=Path, help="rosbag2 recorded from flashocc_node (semantic/panoptic topic)")
    p.add_argument("--gt-dir", type=Path, required=True, help="Occ3D gts/ folder: <scene>/<token>/labels.npz")
    p.add_argument(
        "--pano-gt-dir", type=Path, help="ground truth with 'instances' for RayPQ (occ3d_panoptic; default --gt-dir)"
    )
    p.add_argument("--dataroot", type=Path, help="nuScenes dataroot (lidar poses for RayIoU / RayPQ)")
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes version (default v1.0-trainval)")
    p.add_argument(
        "--split", help="nuScenes split (e.g. val, mini_val): require a prediction for every sample of its scenes"
    )
    p.add_argument("--mask", default="camera", choices=MASK_MODES, help="mIoU voxel mask (default camera)")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    p.add_argument("--plot", type=Path, help="write a per-class bar chart (PNG/SVG/PDF)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="ray casting device")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N samples (0 = all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    bag = p.add_argument_group("bag input")
    bag.add_argument(
        "--source-bag", type=Path, help="the converted bag that was played (exact sample <-> output stamp join)"
    )
    bag.add_argument("--pred-topic", help="prediction topic (default /occupancy/panoptic if recorded, else semantic)")
    bag.add_argument(
        "--match-tolerance-ms",
        type=float,
        default=40.0,
        help="without keyframe camera stamps: join outputs to samples by nearest stamp within this (default 40)",
    )
    return p


# ----------------------------------------------------------------------------------------------------------------
# Bag predictions
# ----------------------------------------------------------------------------------------------------------------


def bag_predictions(
    pred_bag: Path, source_bag: Path | None, topic: str | None, tolerance_ms: float, need_instances: bool
) -> tuple[dict[str, int], Iterator[tuple[str, ev.Prediction]], str, bool]:
    """Join the node's outputs in ``pred_bag`` to nuScenes samples.

    Sample identities and keyframe camera stamps come from ``source_bag`` (the converted bag that was played) or,
    without it, from the /nuscenes/sample messages recorded in ``pred_bag``. Returns ({token: message index},
    an iterator of (token, Prediction) in bag order, the topic used, whether it carries instance ids).
    """
    from flashocc_ros.dataset import bagio
    from flashocc_ros.ros import messages as ros_convert

    counts = bagio.topic_counts(pred_bag)
    if topic is None:
        topic = bagio.PANOPTIC_TOPIC if bagio.PANOPTIC_TOPIC in counts else bagio.SEMANTIC_TOPIC
    if topic not in counts:
        raise ev.EvaluationError(f"{pred_bag}: no topic {topic} (recorded: {', '.join(sorted(counts)) or 'none'})")
    msgtype = counts[topic][0]
    if need_instances and msgtype != bagio.PANOPTIC_OCCUPANCY:
        raise ev.EvaluationError(
            f"{pred_bag}: RayPQ needs {bagio.PANOPTIC_OCCUPANCY} predictions, {topic} is {msgtype}"
        )
    samples = bagio.read_samples(source_bag if source_bag is not None else pred_bag)
    if not samples:
        raise ev.EvaluationError(
            f"{source_bag or pred_bag}: no {bagio.SAMPLE_TOPIC} samples; pass --source-bag (the converted bag played)"
        )

    def decode(msg):
        if msgtype == bagio.PANOPTIC_OCCUPANCY:
            sem, pano = ros_convert.panoptic_from_msg(msg)
            return ev.Prediction(sem.labels, pano)
        return ev.Prediction(ros_convert.occupancy_from_msg(msg).labels)

    stamps = [bagio.stamp_ns(m.msg.header if msgtype != bagio.PANOPTIC_OCCUPANCY else m.msg.semantic.header)
              for m in bagio.iter_messages(pred_bag, [topic])]  # fmt: skip
    exact = all(KEY_CAMERA in s.camera_stamps_ns for s in samples)
    match = bagio.match_to_samples(
        samples, stamps, key_camera=KEY_CAMERA if exact else None, tolerance_ns=0 if exact else int(tolerance_ms * 1e6)
    )
    token_of = {i: t for t, i in match.items()}

    def iterate() -> Iterator[tuple[str, ev.Prediction]]:
        for i, m in enumerate(bagio.iter_messages(pred_bag, [topic])):
            if i in token_of:
                yield token_of[i], decode(m.msg)

    return match, iterate(), topic, msgtype == bagio.PANOPTIC_OCCUPANCY


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------


def _metrics_for(choice: str, has_instances: bool) -> tuple[str, ...]:
    if choice == "all":
        return ("miou", "rayiou", "raypq") if has_instances else ("miou", "rayiou")
    return (choice,)


def run(args: argparse.Namespace) -> ev.EvaluationResult:
    progress = not args.no_progress
    if args.jobs < 1:
        raise ev.EvaluationError(f"--jobs must be >= 1, got {args.jobs}")
    gt_index = ev.index_ground_truth(args.gt_dir)
    pano_dir = args.pano_gt_dir or args.gt_dir
    pano_index = ev.index_ground_truth(pano_dir) if args.pano_gt_dir else gt_index

    # which samples, and whether panoptic inputs exist
    bag_stream = None
    if args.pred_dir is not None:
        preds = ev.index_predictions(args.pred_dir)
        tokens = list(preds)
        first_pred_inst = ev.prediction_has_instances(preds[tokens[0]])
    else:
        match, bag_stream, topic, first_pred_inst = bag_predictions(
            args.pred_bag, args.source_bag, args.pred_topic, args.match_tolerance_ms, args.metric == "raypq"
        )
        tokens = list(match)
        if not tokens:
            raise ev.EvaluationError(f"{args.pred_bag}: no {topic} message matches a sample stamp")
        if progress:
            print(f"{args.pred_bag}: {len(tokens)} outputs on {topic} matched to samples", file=sys.stderr)
    missing_gt = [t for t in tokens if t not in gt_index]
    if missing_gt:
        raise ev.EvaluationError(
            f"{len(missing_gt)} predictions have no ground truth in {args.gt_dir} (first: {missing_gt[0]})"
        )
    if not args.split:
        without = len(gt_index.keys() - set(tokens))
        if without:
            print(
                f"note: {without} of the {len(gt_index)} ground-truth samples in {args.gt_dir} have no prediction; "
                f"scoring the {len(tokens)} that have one (--split S requires every sample of a split)",
                file=sys.stderr,
            )
    gt_has_inst = False
    if args.metric in ("raypq", "all"):
        sample_gt = pano_index.get(tokens[0])
        if sample_gt is None:
            raise ev.EvaluationError(f"sample {tokens[0]} has no panoptic ground truth in {pano_dir}")
        gt_has_inst = ev.ground_truth_has_instances(sample_gt.path)
    if args.metric == "raypq":
        if not gt_has_inst:
            raise ev.EvaluationError(f"{pano_index[tokens[0]].path}: missing key 'instances' (RayPQ needs the "
                                     "panoptic ground truth, occ3d_panoptic layout; see --pano-gt-dir)")  # fmt: skip
        if not first_pred_inst:
            raise ev.EvaluationError("RayPQ needs panoptic predictions ('inst' in the prediction files)")
    metrics = _metrics_for(args.metric, bool(first_pred_inst) and gt_has_inst)
    if args.metric == "all" and "raypq" not in metrics and progress:
        print("RayPQ skipped: needs 'inst' in the predictions and 'instances' in the ground truth", file=sys.stderr)
    if "raypq" in metrics:
        gt_index = pano_index  # RayPQ and RayIoU then read semantics from the panoptic GT, as published

    # lidar origins and sample order
    origins: dict = {}
    needs_rays = any(m in metrics for m in ("rayiou", "raypq"))
    if needs_rays or args.split:
        if args.dataroot is None:
            raise ev.EvaluationError("RayIoU / RayPQ (and --split) need --dataroot D [--version V] for the lidar poses")
        nusc = ev.load_nuscenes(args.dataroot, args.version)
        if args.split:
            _check_split(nusc, args.split, set(tokens))
        if args.pred_dir is not None:
            stamps = ev.sample_timestamps(nusc, tokens)
            tokens.sort(key=lambda t: stamps[t])
        if args.limit:
            tokens = tokens[: args.limit]
        if needs_rays:
            origins = ev.lidar_origins(nusc, tokens, progress=progress)
    elif args.limit:
        tokens = tokens[: args.limit]

    options = ev.ScoringOptions(
        metrics=metrics, mask_mode=args.mask, device=None if args.device == "auto" else args.device
    )
    if bag_stream is None:
        jobs = (ev.SampleJob(t, gt_index[t].path, preds[t], origins.get(t)) for t in tokens)
    else:
        wanted = set(tokens)
        jobs = (ev.SampleJob(t, gt_index[t].path, p, origins.get(t)) for t, p in bag_stream if t in wanted)
    return ev.evaluate(jobs, options, num_workers=args.jobs, progress=progress, total=len(tokens))


def _check_split(nusc, split: str, have: set[str]) -> None:
    missing = [t for t in ev.split_sample_tokens(nusc, split) if t not in have]
    if missing:
        raise ev.EvaluationError(f"split {split}: {len(missing)} samples have no prediction (first: {missing[0]})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (ev.EvaluationError, FileNotFoundError) as exc:
        print(f"flashocc-eval: error: {exc}", file=sys.stderr)
        return 2
    print(ev.format_table(result))
    if args.json:
        ev.write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        ev.plot_per_class(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
