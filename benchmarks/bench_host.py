"""Host overhead per frame of flashocc_node's processing path, with the network replaced by a no-op runner.

    python benchmarks/bench_host.py [--variant flashocc-r50-M0] [--frames 30] [--ego-speed 15] [--device cpu|cuda]
                                    [--workers 2] [--prep tables|pytorch] [--subsampling 444|420] [--no-msgs]
                                    [--json OUT.json] [--sequential] [--ab | --baseline REV] [--rounds 4]

What a frame costs besides the network once the network runs at GPU speed (FlashOcc M0 TensorRT fp16: ~5 ms on
an RTX 3090): six 1600x900 JPEGs (bench_node.py's textured synthetic images: 4:4:4 chroma by default, ~665 KB
each, the costliest to decode; ``--subsampling 420``: cameras' usual 4:2:0, ~415 KB), a moving vehicle (per-camera ego
poses change every frame, so the voxel-pooling indices are recomputed every frame, as flashocc_node does with
``tf.world_frame`` set), decode + preprocess into the network input, post-processing, and the semantic message
plus the point cloud built as the node publishes them (``semantic_to_msg``, ``occupied_points`` +
``pointcloud2_msg``; without the ROS message packages, ``--no-msgs`` or missing: only ``occupied_points``).
No DDS: publishing itself is measured end to end by bench_node.py.

The no-op runner returns a fixed street-like label grid (bench_render.street_scene, ~9 % occupied), so the point
cloud has a realistic size. Per calibration (every frame here) it builds the gather pooling tables as the ONNX
Runtime and TensorRT runners do (``--prep tables``, the default: ``backend: auto`` on the CPU and with TensorRT);
``--prep pytorch`` does TorchRunner's work instead (indices to the device). ``--device cuda`` keeps the runner's
input on the GPU and uses the GPU host path (nvJPEG decode + resize/crop/normalise on the GPU,
``flashocc_ros.network.gpu_preprocess``) where available; the network output (labels) is copied to the host as the
real runner does.

As in flashocc_node, the frame's calibration step (pooling indices + the runner's tables) runs while the six
JPEGs decode (``run_jpeg(calibrate=...)``); its stage time then overlaps the decode's. ``--sequential``
calibrates before the decode; ``--ab`` alternates both in this process (``--rounds`` runs of ``--frames`` each)
and prints the ratio.

Reports per-stage medians and p95 (ms) and the total against the goals of issue 17 (<= 35 ms CPU-only,
<= 10 ms on the GPU path).

``--baseline REV`` compares with the package as of git revision REV (``git archive`` of ``flashocc_ros/`` into a
temporary directory) in the same conditions: ``--rounds`` rounds, each running ``--frames`` frames of the baseline
and of the working tree in fresh processes (alternating which goes first), the same images and poses; prints both
(medians and p95 over all rounds' frames) and the ratio baseline / current per stage. On a shared machine this is
the comparison to trust, not two separate runs. REV must have the package's current layout (commit 8c6e3c2,
"network/ inference/ ros/", or later): this script imports the modules by their current names.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# --package-root DIR (used by --baseline): import flashocc_ros from DIR instead of this checkout
PACKAGE_ROOT = Path(sys.argv[sys.argv.index("--package-root") + 1]) if "--package-root" in sys.argv[:-1] else REPO
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(PACKAGE_ROOT))

from flashocc_ros.backends.base import OCC_LABELS, Runner  # noqa: E402
from flashocc_ros.config import get_variant, load_config  # noqa: E402
from flashocc_ros.network.geometry import RigCalibration, reference_rig  # noqa: E402

GOAL_CPU_MS = 35.0
# per-frame wall times of the stages, their total, and "cpu": the process's CPU time per frame (all threads; less
# sensitive than wall time to other processes on a shared machine: on 2 cores the total cannot be below cpu / 2)
STAGES = ("calibration", "decode_preprocess", "network", "postprocess", "publish", "total", "cpu")
GOAL_GPU_MS = 10.0
PREPS = ("tables", "pytorch")  # per-calibration work of the emulated backend (NoopRunner)
OFFSETS_S = np.array([30, 0, 10, 40, 25, 15]) * 1e-3  # per-camera stamp offsets inside a sweep (nuScenes-like)


class NoopRunner(Runner):
    """A runner whose network does nothing: ``infer`` leaves a fixed label grid (and zero centre maps) in the
    outputs. On CUDA it keeps a device input tensor (``device_image``) and copies the labels device -> host per
    frame like TorchRunner, so the GPU host path is measured with its real transfers. Per calibration it does what
    the emulated backend's runner does: ``prep="tables"`` builds the gather pooling tables as the ONNX Runtime and
    TensorRT runners do (``pooling.pool_tables_from_indices``; what ``backend: auto`` runs on the CPU and with
    TensorRT), ``prep="pytorch"`` moves the indices to the device as TorchRunner does."""

    backend = "noop"

    def __init__(self, variant, labels: np.ndarray, device: str = "cpu", prep: str = "tables") -> None:
        super().__init__(variant, with_logits=False)
        import torch

        self.device = torch.device(device)
        self.outputs[OCC_LABELS][0] = labels
        self.device_image = None
        if self.device.type == "cuda":
            self.device_image = torch.zeros(self.image.shape, dtype=torch.float32, device=self.device)
            self._labels_dev = torch.from_numpy(labels.astype(np.int32)).to(self.device)[None]
            self._labels_host = torch.from_numpy(self.outputs[OCC_LABELS])
        self.input_on_device = False
        if prep not in PREPS:
            raise ValueError(f"prep: expected one of {PREPS}, got {prep!r}")
        self.prep = prep

    def _prepare(self, pool, mlp_input) -> None:
        if self.prep == "tables":  # what OnnxRuntimeRunner / TensorRTRunner do per calibration (then upload)
            from flashocc_ros.backends.pooling import pool_tables_from_indices

            tables = pool_tables_from_indices(pool, self.variant.depth_bins).as_inputs()
            if self.device.type == "cuda":
                import torch

                self._tables = [torch.from_numpy(a).to(self.device) for a in tables.values()]
        else:
            self._pool = pool.to(self.device)  # what TorchRunner does per calibration

    def _infer(self) -> None:
        if self.device.type == "cuda":
            import torch

            if not self.input_on_device:
                self.device_image.copy_(torch.from_numpy(self.image), non_blocking=False)
            self._labels_host.copy_(self._labels_dev, non_blocking=False)
        self.input_on_device = False


def moving_calibration(frame: int, speed: float, rate_hz: float = 12.0) -> RigCalibration:
    """Reference rig on a vehicle driving at ``speed`` m/s with a slow yaw drift: every camera has its own ego
    pose (stamp offsets inside the sweep), and every frame differs from the previous one."""
    rig = reference_rig()
    poses = []
    for off in OFFSETS_S:
        t = frame / rate_hz + off
        yaw = 0.3 + 0.05 * t
        m = np.eye(4)
        c, s = np.cos(yaw), np.sin(yaw)
        m[:2, :2] = [[c, -s], [s, c]]
        m[:3, 3] = [600.0 + speed * t * c, 1600.0 + speed * t * s, 0.0]
        poses.append(m)
    return RigCalibration(rig.intrinsics, rig.sensor2ego, np.stack(poses), rig.image_hw)


def percentiles(values) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(a)), "p95": float(np.percentile(a, 95))}


def run(
    variant: str = "flashocc-r50-M0",
    frames: int = 30,
    warmup: int = 3,
    ego_speed: float = 15.0,
    device: str = "cpu",
    workers: int = 2,
    msgs: bool = True,
    jpegs: list[bytes] | None = None,
    subsampling: str = "444",
    prep: str = "tables",
    overlap: bool = True,
    first_frame: int = 0,
) -> dict:
    """Measure ``frames`` frames after ``warmup``; returns {stage: {median, p95}} in ms plus details."""
    from bench_node import make_jpegs
    from bench_render import street_scene

    from flashocc_ros.inference.pipeline import OccupancyPipeline
    from flashocc_ros.ros.messages import occupied_points

    build_msgs = msgs
    if build_msgs:
        try:
            from std_msgs.msg import Header

            from flashocc_ros.ros.messages import pointcloud2_msg, semantic_to_msg

            semantic_to_msg(street_scene(), Header(frame_id="base_link"), variant)  # import the classes now
        except Exception:  # ROS message packages missing (e.g. the GPU machine): arrays only
            build_msgs = False
    jpegs = jpegs if jpegs is not None else make_jpegs(1600, 900, 0, subsampling)
    v = get_variant(variant)
    cfg = load_config(overrides={"model": {"variant": v.name, "backend": "pytorch", "device": device}})
    runner = NoopRunner(v, street_scene(), device, prep)
    stages = {k: [] for k in STAGES}
    with OccupancyPipeline(cfg, runner=runner, preprocess_workers=workers) as pipe:
        # a package revision without run_jpeg(calibrate=...) (--baseline) calibrates before the decode
        overlap = overlap and "calibrate" in inspect.signature(pipe.run_jpeg).parameters
        for i in range(warmup + frames):
            c0 = time.process_time()
            t0 = time.perf_counter()
            calib = moving_calibration(first_frame + i, ego_speed) if ego_speed > 0 else reference_rig()
            calib_ms: list[float] = []

            def calibrate(calib=calib, calib_ms=calib_ms) -> None:
                c = time.perf_counter()
                pipe.set_calibration(calib)
                calib_ms.append((time.perf_counter() - c) * 1e3)

            if overlap:  # as flashocc_node does: the calibration step runs while the six JPEGs decode
                result = pipe.run_jpeg(jpegs, calibrate=calibrate)
            else:
                calibrate()
                result = pipe.run_jpeg(jpegs)
            t2 = time.perf_counter()
            points = occupied_points(result.semantic, result.panoptic)
            if build_msgs:
                header = Header(frame_id="base_link")
                semantic_to_msg(result.semantic, header, v.name)
                pointcloud2_msg(points, header)
            t3 = time.perf_counter()
            c3 = time.process_time()
            if i < warmup:
                continue
            tm = result.timings_ms
            stages["calibration"].append(calib_ms[0])
            stages["decode_preprocess"].append(tm["decode"] + tm["preprocess"])
            stages["network"].append(tm["inference"])
            stages["postprocess"].append(tm["postprocess"])
            stages["publish"].append((t3 - t2) * 1e3)
            stages["total"].append((t3 - t0) * 1e3)
            stages["cpu"].append((c3 - c0) * 1e3)
        report = {k: percentiles(vals) for k, vals in stages.items()}
        report["details"] = {
            "variant": v.name,
            "frames": frames,
            "device": device,
            "ego_speed_mps": ego_speed,
            "pool_index_computations": pipe.pool_index_computations,
            "jpeg_path": getattr(pipe, "last_jpeg_path", "cpu"),
            "messages_built": build_msgs,
            "occupied_points": int(len(points)),
            "preprocess_workers": workers,
            "runner_prep": prep,
            "calibration_overlaps_decode": overlap,
            "jpeg_kb": [len(j) // 1024 for j in jpegs],
            "load_average": list(os.getloadavg()),
        }
        report["samples"] = stages
    return report


def compare_with_baseline(args) -> dict:
    """Alternate fresh-process runs of the package at ``args.baseline`` and of this checkout; returns
    {"baseline": report, "current": report, "ratio": {stage: baseline median / current median}}."""
    import subprocess
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench_host_") as tmp:
        base_root = Path(tmp) / "baseline"
        base_root.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", args.baseline, "flashocc_ros"],
            check=True,
            capture_output=True,
        ).stdout
        archive_path = Path(tmp) / "baseline.tar"
        archive_path.write_bytes(archive)
        with tarfile.open(archive_path) as tar:
            tar.extractall(base_root, filter="data")

        def measure(name: str, r: int) -> dict:
            out = Path(tmp) / f"{name}_{r}.json"
            root = base_root if name == "baseline" else REPO
            cmd = [sys.executable, str(Path(__file__).resolve()), "--package-root", str(root), "--json", str(out)]
            cmd += ["--variant", args.variant, "--frames", str(args.frames), "--ego-speed", str(args.ego_speed)]
            cmd += ["--device", args.device, "--workers", str(args.workers), "--subsampling", args.subsampling]
            cmd += ["--prep", args.prep]
            cmd += ["--no-msgs"] if args.no_msgs else []
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            return json.loads(out.read_text())

        return alternate(args.rounds, measure, args.baseline)


def alternate(rounds: int, measure, label: str) -> dict:
    """``measure(name, round)`` -> a run's report for "baseline" and "current", in alternating order per round;
    returns both (medians and p95 over all their frames) and the ratio baseline / current per stage."""
    samples = {"baseline": {k: [] for k in STAGES}, "current": {k: [] for k in STAGES}}
    details = {}
    for r in range(rounds):
        for name in ("baseline", "current") if r % 2 == 0 else ("current", "baseline"):
            rep = measure(name, r)
            for k in STAGES:
                samples[name][k].extend(rep["samples"][k])
            details[name] = rep["details"]
    result = {}
    for name in ("baseline", "current"):
        result[name] = {k: percentiles(v) for k, v in samples[name].items()}
        result[name]["details"] = details[name]
    result["ratio"] = {k: result["baseline"][k]["median"] / max(result["current"][k]["median"], 1e-9) for k in STAGES}
    result["revision"] = label
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="flashocc-r50-M0")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--ego-speed", type=float, default=15.0, help="m/s; 0 = static ego (indices computed once)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--workers", type=int, default=2, help="decode/preprocess threads")
    ap.add_argument(
        "--prep",
        default="tables",
        choices=PREPS,
        help="per-calibration work of the emulated backend: tables = ONNX Runtime / TensorRT pooling tables "
        "(backend auto on the CPU and with TensorRT), pytorch = TorchRunner's",
    )
    ap.add_argument("--subsampling", default="444", choices=("444", "420"), help="JPEG chroma subsampling")
    ap.add_argument("--no-msgs", action="store_true", help="do not build ROS messages (arrays only)")
    ap.add_argument("--json", default="", help="also write the report here")
    ap.add_argument("--baseline", default="", help="git revision to compare with (alternating fresh processes)")
    ap.add_argument("--rounds", type=int, default=4, help="with --baseline: rounds of --frames frames each")
    ap.add_argument(
        "--sequential", action="store_true", help="calibrate before the decode (default: during it, as the node)"
    )
    ap.add_argument(
        "--ab",
        action="store_true",
        help="compare calibrating during the decode with calibrating before it: --rounds alternating runs of "
        "--frames frames each in this process",
    )
    ap.add_argument("--package-root", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.baseline:
        return print_comparison(compare_with_baseline(args), args)
    if args.ab:
        return print_comparison(compare_overlap(args), args)
    report = run(
        args.variant, args.frames, 3, args.ego_speed, args.device, args.workers, not args.no_msgs,
        subsampling=args.subsampling, prep=args.prep, overlap=not args.sequential,
    )  # fmt: skip
    d = report["details"]
    print(
        f"host overhead per frame, {d['variant']}, {d['device']}, six 1600x900 JPEGs ({args.subsampling}, "
        f"{np.mean(d['jpeg_kb']):.0f} KB), runner prep {d['runner_prep']}, ego {d['ego_speed_mps']:g} m/s "
        f"({d['pool_index_computations']} index computations), no-op network, {d['frames']} frames"
    )
    for k in STAGES:
        print(f"  {k:<18}: median {report[k]['median']:7.2f} ms   p95 {report[k]['p95']:7.2f} ms")
    goal = GOAL_GPU_MS if args.device == "cuda" else GOAL_CPU_MS
    print(f"  goal (issue 17)   : <= {goal:g} ms -> {'met' if report['total']['median'] <= goal else 'NOT met'}")
    print(f"  messages built: {d['messages_built']}, {d['occupied_points']} points, jpeg path: {d['jpeg_path']}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def compare_overlap(args) -> dict:
    """Alternating runs in this process: calibration before the decode ("baseline") and during it ("current")."""

    def measure(name: str, r: int) -> dict:
        overlap = name == "current"
        first = (2 * r + overlap) * (args.frames + 3)  # poses never repeat: no cache helps either run
        return run(
            args.variant, args.frames, 3, args.ego_speed, args.device, args.workers, not args.no_msgs,
            subsampling=args.subsampling, prep=args.prep, overlap=overlap, first_frame=first,
        )  # fmt: skip

    return alternate(args.rounds, measure, "calibration before the decode (--sequential)")


def print_comparison(result: dict, args) -> int:
    d = result["current"]["details"]
    print(
        f"host overhead per frame, {d['variant']}, {d['device']}, ego {d['ego_speed_mps']:g} m/s, no-op network: "
        f"baseline: {result['revision']} vs this checkout (calibration during the decode: "
        f"{result['current']['details'].get('calibration_overlaps_decode')}), {args.rounds} alternating rounds of "
        f"{args.frames} frames"
    )
    print(f"  {'stage':<18}  {'baseline median / p95':>24}  {'current median / p95':>24}  ratio")
    for k in STAGES:
        b, c = result["baseline"][k], result["current"][k]
        print(
            f"  {k:<18}  {b['median']:10.2f} / {b['p95']:8.2f} ms  {c['median']:10.2f} / {c['p95']:8.2f} ms"
            f"  {result['ratio'][k]:.2f}x"
        )
    goal = GOAL_GPU_MS if args.device == "cuda" else GOAL_CPU_MS
    met = result["current"]["total"]["median"] <= goal
    print(f"  goal (issue 17)   : <= {goal:g} ms -> {'met' if met else 'NOT met'} (current)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
