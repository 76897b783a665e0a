"""flashocc-demo: the whole pipeline on one small scene, the way a ROS user runs it, with a report at the end.

  dataset (synthetic nuScenes-format scene, or --dataroot) -> flashocc-nusc2bag -> flashocc_node (subprocess,
  real DDS) <- flashocc-play, outputs -> flashocc-record -> flashocc-eval (mIoU, RayIoU) -> renderings + timing
  -> <out>/report.md

Any of the seven variants (--variant, official or short name); the temporal ones (M2, P2, P9) run through the node's
temporal path and play slower on CPU (see --seconds-per-frame).

Weights: --checkpoint, else models/<variant>.pth, else deterministic UNTRAINED weights (loud warning: the
occupancy is then meaningless, but every step, timing and tool is real).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from flashocc_ros.config import CLASS_NAMES, DEFAULT_VARIANT, VARIANTS, CameraConfig, get_variant
from flashocc_ros.ros.launch_support import fastdds_profile, node_command, share_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
UNTRAINED_WARNING = (
    "WARNING: no checkpoint found for {variant} (looked for --checkpoint and models/{variant}.pth).\n"
    "WARNING: using deterministic UNTRAINED weights: the occupancy below is MEANINGLESS until real weights are\n"
    "WARNING: provided (see models/README.md). Every step, timing and tool of the demo is real."
)
TIMING_FIELDS = ("decode_ms", "preprocess_ms", "inference_ms", "postprocess_ms", "publish_ms", "total_ms", "latency_ms")


class DemoError(RuntimeError):
    pass


class Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, total: int):
        self.total, self.index, self.t0 = total, 0, time.monotonic()

    def __call__(self, text: str) -> None:
        self.index += 1
        print(f"[demo {self.index}/{self.total}] {text} (t={time.monotonic() - self.t0:.0f} s)", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flashocc-demo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("reports/demo"), help="report folder (default reports/demo)")
    p.add_argument(
        "--variant",
        default=DEFAULT_VARIANT,
        type=variant_name,
        choices=sorted(VARIANTS),
        metavar="VARIANT",
        help="model variant: official config name or short name (M0, M1, PT, PF; temporal M2, P2, P9);\n"
        f"default {DEFAULT_VARIANT}",
    )
    p.add_argument("--checkpoint", default="", help="official .pth (default: models/<variant>.pth if present)")
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "pytorch"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dataroot", type=Path, help="real nuScenes dataroot (default: build a synthetic scene)")
    p.add_argument("--version", default="v1.0-mini", help="nuScenes version with --dataroot (default v1.0-mini)")
    p.add_argument("--scene", default="", help="scene to run (default: the first of the dataset)")
    p.add_argument("--occ3d-gts", type=Path, help="Occ3D gts/ folder (default <dataroot>/gts)")
    p.add_argument("--frames", type=int, default=4, help="keyframes of the synthetic scene (default 4)")
    p.add_argument(
        "--seconds-per-frame",
        type=float,
        default=0.0,
        help="wall seconds between played keyframes (default on CPU: 5, 20 for the two-frame temporal variants,\n"
        "90 for P9; 0.5 on CUDA): the node keeps the latest complete camera set, so frames arriving faster than\n"
        "it runs are replaced (counted, not queued); for a temporal variant a replaced keyframe is also a\n"
        "missing history frame",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (default 600)")
    return p


def variant_name(name: str) -> str:
    """Official config name of ``name`` (official or short name); argparse's error names the known variants."""
    try:
        return get_variant(name).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def default_spacing(variant: str, device: str) -> float:
    """Wall seconds between played keyframes so the node (untrained weights, 2 CPU cores) keeps up with every one."""
    if device != "cpu":
        return 0.5
    v = VARIANTS[variant]
    return 5.0 if not v.temporal else 10.0 * v.bev_frames


# ----------------------------------------------------------------------------------------------------------------
# steps
# ----------------------------------------------------------------------------------------------------------------


def prepare_dataset(args, out: Path):
    if args.dataroot is not None:
        gts = args.occ3d_gts or args.dataroot / "gts"
        return args.dataroot, args.version, args.scene or None, gts, "nuScenes at " + str(args.dataroot)
    from flashocc_ros.dataset.synthetic import make_synthetic_nuscenes

    ds = make_synthetic_nuscenes(out / "dataset", num_scenes=1, samples_per_scene=args.frames, camera_sweeps=False)
    return ds.dataroot, ds.version, ds.scene_names[0], ds.occ3d_gts_dir, "synthetic nuScenes-format scene"


def convert_scene(dataroot: Path, version: str, scene: str | None, gts: Path, out: Path) -> tuple[Path, str]:
    from flashocc_ros.dataset.nusc2bag import ConvertOptions, convert

    options = ConvertOptions(keyframes_only=True, occ3d_gts=gts if gts.is_dir() else None)
    if scene is None:
        from flashocc_ros.dataset.nusc2bag import load_nuscenes

        scene = load_nuscenes(dataroot, version).scene[0]["name"]
    (result,) = convert(dataroot, version, [scene], out / "bags", options)
    if result.status not in ("written", "skipped") or result.path is None:
        raise DemoError(f"conversion of {scene} failed: {result.error}")
    return Path(result.path), scene


def resolve_checkpoint(args) -> str:
    if args.checkpoint:
        if not Path(args.checkpoint).is_file():
            raise DemoError(f"--checkpoint {args.checkpoint}: file not found")
        return str(Path(args.checkpoint).resolve())
    for root in (REPO_ROOT / "models", share_dir() / "models"):
        candidate = root / f"{args.variant}.pth"
        if candidate.is_file():
            return str(candidate)
    print(UNTRAINED_WARNING.format(variant=args.variant), flush=True)
    return ""


def ros_environment(out: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(fastdds_profile()))
    env["ROS_LOG_DIR"] = str(out / "logs" / "ros")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    proc.log_handle = handle  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 20.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.log_handle.close()  # type: ignore[attr-defined]
    return proc.returncode


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for_file_growth(path: Path, proc: subprocess.Popen, marker: str, timeout: float) -> None:
    """Wait until `marker` appears in a process log (or the process dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise DemoError(f"{path.stem} exited with code {proc.returncode}:\n{tail(path)}")
        time.sleep(0.2)
    raise DemoError(f"timed out after {timeout:.0f} s waiting for '{marker}' in {path}")


def run_pipeline(args, bag: Path, checkpoint: str, out: Path, steps: Steps) -> Path:
    """Node + recorder + player over real DDS; returns the recorded bag."""
    from flashocc_ros.dataset import bagio

    env = ros_environment(out)
    recorded = out / "recorded"
    if recorded.exists():
        shutil.rmtree(recorded)
    panoptic = VARIANTS[args.variant].panoptic
    outputs = [bagio.SEMANTIC_TOPIC, bagio.TIMING_TOPIC] + ([bagio.PANOPTIC_TOPIC] if panoptic else [])
    num_frames = bagio.topic_counts(bag)[bagio.SAMPLE_TOPIC][1]

    node_cmd = node_command(args.variant, checkpoint=checkpoint, backend=args.backend)
    node_cmd += ["-p", f"model.device:={args.device}"]
    steps(f"starting flashocc_node ({args.variant}, backend {args.backend}) and the recorder")
    node = start(node_cmd, env, out / "logs" / "node.log")
    recorder = None
    try:
        wait_for_file_growth(out / "logs" / "node.log", node, " ready on ", args.timeout)
        record_cmd = [sys.executable, "-m", "flashocc_ros.tools.record", "--out", str(recorded), *outputs]
        record_cmd += [bagio.SAMPLE_TOPIC, "--max-messages", str(num_frames * (len(outputs) + 1))]
        recorder = start(record_cmd, env, out / "logs" / "record.log")
        wait_for_file_growth(out / "logs" / "record.log", recorder, "flashocc-record: recording", 60)

        cameras = CameraConfig().topics()
        play_topics = [t for _, t, _ in cameras] + [i for _, _, i in cameras]
        play_topics += [bagio.TF_STATIC_TOPIC, bagio.TF_TOPIC, bagio.SAMPLE_TOPIC]
        play_base = [sys.executable, "-m", "flashocc_ros.tools.play", str(bag), "--wait-for-subscribers"]
        play_base += ["--wait-timeout", "60", "--topics", *play_topics]

        spacing = args.seconds_per_frame if args.seconds_per_frame > 0 else default_spacing(args.variant, args.device)
        period = bag_keyframe_period(bag)
        rate = min(1.0, period / spacing)
        steps(f"playing {num_frames} keyframes at rate {rate:.3f} ({spacing:.1f} s per frame)")
        player = start([*play_base, "--rate", f"{rate:.4f}"], env, out / "logs" / "play.log")
        deadline = time.monotonic() + args.timeout
        while player.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if stop(player) not in (0, None):
            raise DemoError(f"flashocc-play failed:\n{tail(out / 'logs' / 'play.log')}")
        # Let the node finish the last frame, then the recorder stops by itself (--max-messages) or is stopped.
        end = time.monotonic() + max(3.0 * spacing, 10.0)
        while recorder.poll() is None and time.monotonic() < end:
            time.sleep(0.2)
    finally:
        if recorder is not None:
            stop(recorder)
        stop(node)
    if not (recorded / "metadata.yaml").is_file():
        raise DemoError(
            f"nothing was recorded:\n{tail(out / 'logs' / 'record.log')}\n{tail(out / 'logs' / 'node.log')}"
        )
    return recorded


def bag_keyframe_period(bag: Path) -> float:
    from flashocc_ros.dataset import bagio

    stamps = sorted(bagio.stamp_ns(m.msg.header) for m in bagio.iter_messages(bag, [bagio.SAMPLE_TOPIC]))
    return float(np.median(np.diff(stamps))) / 1e9 if len(stamps) > 1 else 0.5


def evaluate(recorded: Path, bag: Path, dataroot: Path, version: str, gts: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "flashocc_ros.tools.evaluate", "all", "--pred-bag", str(recorded)]
    cmd += ["--source-bag", str(bag), "--gt-dir", str(gts), "--dataroot", str(dataroot), "--version", version]
    cmd += ["--json", str(out / "eval.json"), "--plot", str(out / "eval_per_class.png"), "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    (out / "eval_table.txt").write_text(res.stdout)
    if res.returncode != 0:
        raise DemoError(f"flashocc-eval failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return json.loads((out / "eval.json").read_text())


def render(recorded: Path, bag: Path, gts: Path, out: Path) -> list[Path]:
    from flashocc_ros.metrics.evaluation import index_ground_truth, load_ground_truth
    from flashocc_ros.tools.evaluate import bag_predictions
    from flashocc_ros.viz import render_comparison

    gt_index = index_ground_truth(gts)
    _, predictions, *_ = bag_predictions(recorded, bag, None, 40.0, need_instances=False)
    images = []
    (out / "bev").mkdir(exist_ok=True)
    for i, (token, pred) in enumerate(predictions):
        gt = load_ground_truth(gt_index[token].path) if token in gt_index else None
        path = out / "bev" / f"{i:03d}_{token}.png"
        render_comparison(
            pred.semantic,
            None if gt is None else gt.semantics,
            path,
            mask=None if gt is None else gt.mask_camera,
            title=f"sample {token}: prediction | ground truth",
            views=("bev",),
        )
        images.append(path)
    if images:
        shutil.copyfile(images[0], out / "bev_comparison.png")
    return images


def timing_summary(recorded: Path) -> dict:
    from flashocc_ros.dataset import bagio

    rows = [m.msg for m in bagio.iter_messages(recorded, [bagio.TIMING_TOPIC])]
    summary: dict = {"frames": len(rows)}
    if rows:
        for field in TIMING_FIELDS:
            values = np.array([getattr(r, field) for r in rows], dtype=float)
            summary[field] = {"median": float(np.median(values)), "p95": float(np.percentile(values, 95))}
        summary["backend"] = rows[-1].backend
        summary["sets_replaced"] = int(rows[-1].sets_replaced)
        summary["sets_incomplete"] = int(rows[-1].sets_incomplete)
        summary["images_rejected"] = int(rows[-1].images_rejected)
    return summary


def write_report(out: Path, info: dict, evaluation: dict, timing: dict, images: list[Path]) -> Path:
    lines = ["# flashocc_ros demo report", ""]
    if info["untrained"]:
        lines += ["> **UNTRAINED WEIGHTS**: no checkpoint was found; the occupancy is meaningless.", ""]
    lines += [f"- {k}: `{v}`" for k, v in info.items() if k != "untrained"]
    lines += ["", "## Timing (node, per frame, ms)", "", "| stage | median | p95 |", "|---|---|---|"]
    for field in TIMING_FIELDS:
        if field in timing:
            lines.append(f"| {field[:-3]} | {timing[field]['median']:.1f} | {timing[field]['p95']:.1f} |")
    lines += ["", f"frames processed: {timing.get('frames', 0)}, backend: {timing.get('backend', '?')}", ""]
    lines += ["## Evaluation", "", "```", (out / "eval_table.txt").read_text().rstrip(), "```", ""]
    lines += [f"summary: `{json.dumps(evaluation.get('summary', {}))}`", ""]
    if evaluation:
        headline = {
            k: evaluation.get(k, {}).get("mean") for k in ("miou", "rayiou") if isinstance(evaluation.get(k), dict)
        }
        lines += [f"headline: {json.dumps(headline)}", ""]
    lines += ["## Bird's-eye view (prediction | ground truth)", ""]
    lines += [f"![{p.stem}]({p.relative_to(out)})" for p in images]
    lines += ["", f"Classes: {', '.join(CLASS_NAMES)}", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps({"info": info, "timing": timing, "evaluation": evaluation}, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(7)
    try:
        steps("preparing the dataset")
        dataroot, version, scene, gts, what = prepare_dataset(args, out)
        steps(f"converting {scene or 'the first scene'} of {what} to a rosbag2 bag")
        bag, scene = convert_scene(dataroot, version, scene, gts, out)
        checkpoint = resolve_checkpoint(args)
        recorded = run_pipeline(args, bag, checkpoint, out, steps)
        steps("evaluating the recorded outputs against the ground truth (mIoU, RayIoU)")
        evaluation = evaluate(recorded, bag, dataroot, version, gts, out)
        steps("rendering bird's-eye views")
        images = render(recorded, bag, gts, out)
        steps("writing the report")
        timing = timing_summary(recorded)
        info = {
            "variant": args.variant,
            "weights": checkpoint or "deterministic untrained (seed 0)",
            "untrained": not checkpoint,
            "dataset": what,
            "scene": scene,
            "bag": str(bag),
            "recorded": str(recorded),
        }
        variant = VARIANTS[args.variant]
        if variant.temporal:
            info["history"] = (
                f"{variant.num_frames - 1} previous keyframe(s), chosen by time in the node (a missing one is "
                "replaced by the current frame, the official scene-start rule)"
            )
        report = write_report(out, info, evaluation, timing, images)
    except DemoError as exc:
        print(f"flashocc-demo: error: {exc}", file=sys.stderr)
        return 1
    print()
    print(f"demo finished: {timing.get('frames', 0)} frames, report at {report}")
    if not checkpoint:
        print("(untrained weights: put an official checkpoint in models/ for meaningful occupancy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
