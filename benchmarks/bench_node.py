"""End-to-end benchmark of flashocc_node over real DDS (node in a subprocess, like the tests).

    python benchmarks/bench_node.py [--variant flashocc-r50-M0] [--frames 10] [--backend auto] [--size 1600x900]
                                    [--ego-speed 15]

Publishes six synthetic 1600x900 JPEG streams (nuScenes rig calibration via CameraInfo + /tf_static) in a closed
loop (next set when the previous output arrived) and reports, from the node's /occupancy/timing messages:
frames/s, latency p50/p95 (last image received -> outputs published), the share of frame time spent outside the
network (decode, preprocess, post-process, publish), and 6-JPEG decode+preprocess time. In the same run it
measures the 6-JPEG decode+preprocess baseline of the exact official path (Pillow decode, Pillow bicubic resize)
in this process, and prints the ratio.

--ego-speed V (m/s, > 0): a moving vehicle. The six cameras of a sweep get nuScenes-like stamp offsets (0-40 ms)
and /tf map -> base_link is published at every camera stamp (as flashocc-nusc2bag does), so the node composes the
per-camera ego poses and recomputes the voxel-pooling indices every frame; the benchmark then also reports that
cost (node frame time minus its timed stages: TF lookups + pool indices) against the network time of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flashocc_ros.config import CAMERA_NAMES  # noqa: E402
from flashocc_ros.transforms import quaternion_xyzw_to_matrix  # noqa: E402

RIG = json.loads((REPO / "test" / "data" / "nuscenes_rig.json").read_text())["cameras"]
OFFSETS_MS = [30, 0, 10, 40, 25, 15]  # per-camera stamp offsets inside one sweep (nuScenes-like), --ego-speed only


def ego_pose_xyzw(t_s: float, speed: float) -> tuple[list[float], list[float]]:
    """Straight drive along x with a slow yaw drift: (translation, quaternion x, y, z, w) at time t_s."""
    yaw = 0.3 + 0.05 * t_s
    return [600.0 + speed * t_s, 1600.0, 0.0], [0.0, 0.0, float(np.sin(yaw / 2)), float(np.cos(yaw / 2))]


def make_jpegs(w: int, h: int, seed: int, subsampling: str = "444") -> list[bytes]:
    """Six textured JPEGs (smooth random colour fields + per-pixel noise, quality 90), chroma ``subsampling``
    "444" (the default: ~665 KB at 1600x900, the costliest to decode) or "420" (cameras' usual, ~415 KB)."""
    import cv2
    import simplejpeg

    out = []
    for i in range(6):
        rng = np.random.default_rng([seed, i])
        coarse = rng.uniform(0, 255, size=(h // 25 + 2, w // 25 + 2, 3)).astype(np.float32)
        img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 6, (h, w, 3))
        pixels = np.clip(img, 0, 255).astype(np.uint8)
        out.append(simplejpeg.encode_jpeg(pixels, quality=90, colorspace="RGB", colorsubsampling=subsampling))
    return out


def baseline_decode_preprocess_ms(jpegs: list[bytes], repeats: int = 5) -> tuple[float, float, float]:
    """Medians for 6 JPEGs, ms: (official path: Pillow decode + preprocess_image, fast path one image after the
    other, fast path on the pipeline's 2-thread BatchPreprocessor as in the node)."""
    import io

    from PIL import Image

    from flashocc_ros.network.preprocess import BatchPreprocessor, preprocess_image, preprocess_jpeg

    out = np.empty((len(jpegs), 3, 256, 704), np.float32)
    batch = BatchPreprocessor(2)

    def official():
        for i, j in enumerate(jpegs):
            preprocess_image(np.asarray(Image.open(io.BytesIO(j)).convert("RGB")), out[i])

    def fast():
        for i, j in enumerate(jpegs):
            preprocess_jpeg(j, out[i])

    def pooled():
        batch.jpegs_into(jpegs, out)

    res = []
    for fn in (official, fast, pooled):
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        res.append(float(np.median(times)))
    batch.close()
    return res[0], res[1], res[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="flashocc-r50-M0")
    ap.add_argument("--frames", type=int, default=10, help="measured frames (after 2 warm-up frames)")
    ap.add_argument("--backend", default="", help="override model.backend")
    ap.add_argument("--device", default="", help="override model.device")
    ap.add_argument("--size", default="1600x900", help="camera image WIDTHxHEIGHT")
    ap.add_argument("--ego-speed", type=float, default=0.0, help="m/s; > 0: moving ego on /tf (see above)")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    w, h = (int(v) for v in args.size.split("x"))
    scale = w / 1600.0

    import rclpy
    from geometry_msgs.msg import TransformStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, CompressedImage
    from tf2_msgs.msg import TFMessage

    from flashocc_ros.msg import InferenceTiming

    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_profile.xml"))
    env["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE")})
    cmd = [sys.executable, "-m", "flashocc_ros.node", "--ros-args", "--params-file"]
    cmd += [str(REPO / "config" / f"{args.variant}.yaml"), "-p", "outputs.publish_markers:=false"]
    for key, value in (("model.backend", args.backend), ("model.device", args.device)):
        if value:
            cmd += ["-p", f"{key}:={value}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(line.rstrip() for line in proc.stdout), daemon=True).start()

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(env["ROS_DOMAIN_ID"]))
    node = rclpy.create_node("bench_node_driver", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    img_pubs = [node.create_publisher(CompressedImage, f"/{c}/image/compressed", reliable) for c in CAMERA_NAMES]
    info_pubs = [node.create_publisher(CameraInfo, f"/{c}/camera_info", reliable) for c in CAMERA_NAMES]
    tf_pub = node.create_publisher(TFMessage, "/tf_static", latched)
    tf_dyn_pub = node.create_publisher(TFMessage, "/tf", reliable)
    timings: dict[int, InferenceTiming] = {}

    def on_timing(msg):
        timings[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = msg

    node.create_subscription(InferenceTiming, "/occupancy/timing", on_timing, reliable)

    transforms = []
    for c in CAMERA_NAMES:
        t = TransformStamped()
        t.header.frame_id, t.child_frame_id = "base_link", c
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = RIG[c]["translation"]
        wq, xq, yq, zq = RIG[c]["rotation_wxyz"]
        quaternion_xyzw_to_matrix(xq, yq, zq, wq)  # validates
        t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = xq, yq, zq, wq
        transforms.append(t)
    tf_pub.publish(TFMessage(transforms=transforms))

    def spin_until(pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            ex.spin_once(timeout_sec=0.02)
        return False

    try:
        if not spin_until(lambda: all(p.get_subscription_count() for p in img_pubs) or proc.poll() is not None, 300):
            raise SystemExit("node did not subscribe:\n" + "\n".join(log))
        if proc.poll() is not None:
            raise SystemExit("node exited:\n" + "\n".join(log))
        jpegs = make_jpegs(w, h, 0)
        t0 = 1_700_000_000 * 1_000_000_000
        n_total = args.frames + 2
        wall_start = None
        for k in range(n_total):
            if k == 2:
                wall_start = time.perf_counter()
            stamp = t0 + k * 100_000_000
            moving = args.ego_speed > 0
            cam_stamps = [stamp + ((o - OFFSETS_MS[0]) * 1_000_000 if moving else 0) for o in OFFSETS_MS]
            if moving:
                poses = []
                for cs in sorted(set(cam_stamps)):
                    t = TransformStamped()
                    t.header.frame_id, t.child_frame_id = "map", "base_link"
                    t.header.stamp.sec, t.header.stamp.nanosec = divmod(cs, 1_000_000_000)
                    (x, y, z), (qx, qy, qz, qw) = ego_pose_xyzw((cs - t0) * 1e-9, args.ego_speed)
                    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = x, y, z
                    t.transform.rotation.x, t.transform.rotation.y = qx, qy
                    t.transform.rotation.z, t.transform.rotation.w = qz, qw
                    poses.append(t)
                tf_dyn_pub.publish(TFMessage(transforms=poses))
            for i, c in enumerate(CAMERA_NAMES):
                info = CameraInfo(width=w, height=h)
                info.header.frame_id = c
                K = np.asarray(RIG[c]["K"], dtype=np.float64).reshape(3, 3)
                K[:2] *= scale
                info.k = K.ravel().tolist()
                info_pubs[i].publish(info)
            for i, c in enumerate(CAMERA_NAMES):
                msg = CompressedImage(format="jpeg", data=jpegs[i])
                msg.header.frame_id = c
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(cam_stamps[i], 1_000_000_000)
                img_pubs[i].publish(msg)
            if not spin_until(lambda s=stamp: s in timings, 120):
                raise SystemExit("no output:\n" + "\n".join(log[-30:]))
        wall = time.perf_counter() - wall_start
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        ex.shutdown()
        node.destroy_node()
        ctx.try_shutdown()

    measured = [timings[s] for s in sorted(timings)][2:]
    lat = np.array([m.latency_ms for m in measured])
    total = np.array([m.total_ms for m in measured])
    inference = np.array([m.inference_ms for m in measured])
    dec_pre = np.array([m.decode_ms + m.preprocess_ms for m in measured])
    outside = 1.0 - inference / np.maximum(total, 1e-9)
    stages = dec_pre + inference + np.array([m.postprocess_ms + m.publish_ms for m in measured])
    calibration = total - stages  # untimed part of a frame: calibration (TF lookups, pool indices when they change)
    official_ms, fast_ms, pooled_ms = baseline_decode_preprocess_ms(jpegs)
    print(
        f"flashocc_node end-to-end, {args.variant}, backend {measured[0].backend}, {w}x{h} JPEG x6, "
        f"{len(measured)} frames, closed loop"
    )
    print(f"  frames/s (closed loop)            : {len(measured) / wall:.2f}")
    print(f"  latency p50 / p95 [ms]            : {np.percentile(lat, 50):.1f} / {np.percentile(lat, 95):.1f}")
    print(f"  node frame time median [ms]       : {np.median(total):.1f} (network {np.median(inference):.1f})")
    print(f"  share outside the network (median): {100 * np.median(outside):.1f} %")
    print(f"  6-JPEG decode+preprocess in node  : {np.median(dec_pre):.1f} ms (median)")
    motion = f"moving ego {args.ego_speed:g} m/s, indices recomputed per frame" if args.ego_speed > 0 else "static ego"
    print(
        f"  calibration per frame ({motion}): {np.median(calibration):.1f} ms median "
        f"= {100 * np.median(calibration / np.maximum(inference, 1e-9)):.1f} % of the network time"
    )
    print(
        f"  same, measured here: fast path 2 threads {pooled_ms:.1f} ms / sequential {fast_ms:.1f} ms vs official "
        f"Pillow path {official_ms:.1f} ms -> {official_ms / pooled_ms:.1f}x"
    )
    load = os.getloadavg()
    print(f"  load average after the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
