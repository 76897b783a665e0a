"""flashocc_node with a temporal variant (panoptic-flashocc-r50-depth4d-pano, current + one previous keyframe) on a
moving vehicle, over real DDS, against the offline all-frames-at-once answer.

An independent publisher plays camera sets stamped at 12 Hz (1/12 s apart): six raw ``rgb8`` images (800x450,
K scaled), ``CameraInfo``, camera extrinsics on ``/tf_static`` and ``/tf`` map -> base_link at every camera's stamp
(8 m/s with a slow turn). The node needs seconds per set on this CPU, so the publisher is paced by the node's
outputs and the fused frames are known:

1. the set at t0, then at once the in-between sets t0 + 1/12 .. 5/12 s (the node is busy with t0: the latest-wins
   slot keeps the newest of them, which the node processes next and adds to its history, whatever it is);
2. after those outputs, the set at t0 + 0.5 s: its output must be the official answer for the keyframe-spaced
   frames [t0 + 0.5 s, t0] (``TemporalPipeline.run_frames``, every frame encoded from its images, parity-tested
   against the official golden4d answers in test_model4d.py), i.e. the in-between sets did not take the slot;
0. first a set stamped before t0 without ego poses on /tf: it must be skipped with one warning naming the
   temporal variants' need for the tf.world_frame -> ego TF (never processed with one shared ego pose);
3. a bag loop: the set at t0 again. The history is reset with exactly one warning and the output is the official
   first-frame answer (missing history = the current frame repeated: run_frames with the set twice), as is the
   output for the first t0 set.

``/diagnostics`` must report ``history_depth`` 1/1 after step 2 and 0/1 after the reset. The grids are decoded from
the messages' documented layout (C order over [ix, iy, iz]), not with the package's decoders, and compared under
the near-tie rules of test/reference/near_ties.py (tie judgements from the reference run's own logits and head
maps, as in test_node_parity.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from flashocc_ros.config import CAMERA_NAMES, load_config
from test.conftest import require_ros, wait_for
from test.reference.near_ties import (
    LABEL_MARGIN,
    OFFICIAL_HEAD_TO_OCC,
    check_centers,
    check_labels,
    check_panoptic,
    top2_margin,
)
from test.ros.test_node import (
    OFFSETS_MS,
    Driver,
    NodeProcess,
    _context,
    _module_env,
    intrinsics,
    make_image,
    sensor2ego,
)
from test.ros.test_node_parity import PARAMS as NODE_PARITY_PARAMS

pytestmark = [pytest.mark.ros, pytest.mark.slow]

VARIANT = "panoptic-flashocc-r50-depth4d-pano"
T0_NS = 1_700_000_100 * 1_000_000_000
SET_NS = 1_000_000_000 / 12  # 12 Hz camera sets
SPEED = 8.0  # m/s
YAW0, YAW_RATE = 0.3, 0.05  # rad, rad/s
H, W = 450, 800
PYTORCH_LOGIT_REL_TOL = 1e-4
PARAMS = {
    **NODE_PARITY_PARAMS,  # raw images, pytorch on the CPU, official panoptic mode, reliable camera links
    "model.variant": VARIANT,
    "diagnostics.camera_timeout_s": "600.0",  # the paced publisher pauses for seconds between sets
}
OUTPUT_TIMEOUT = 120.0


def key_stamp(k: int) -> int:
    """Key camera (CAM_FRONT_LEFT) stamp of the k-th 12 Hz set."""
    return T0_NS + round(k * SET_NS)


def camera_stamps(key_ns: int) -> list[int]:
    return [key_ns + (OFFSETS_MS[i] - OFFSETS_MS[0]) * 1_000_000 for i in range(6)]


def ego_pose(stamp_ns: int) -> tuple[np.ndarray, float]:
    """(translation, yaw) of the vehicle: 8 m/s along a slow left turn, nuScenes-like global coordinates."""
    t = (stamp_ns - T0_NS) * 1e-9
    yaw = YAW0 + YAW_RATE * t
    r = SPEED / YAW_RATE
    return np.array([600.0 + r * (np.sin(yaw) - np.sin(YAW0)), 1600.0 - r * (np.cos(yaw) - np.cos(YAW0)), 0.0]), yaw


def ego2global(stamp_ns: int) -> np.ndarray:
    """The same pose as a matrix, written out here (not through the package's quaternion code)."""
    p, yaw = ego_pose(stamp_ns)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    m[:3, 3] = p
    return m


def pose_message(stamp_ns: int):
    from geometry_msgs.msg import TransformStamped

    p, yaw = ego_pose(stamp_ns)
    t = TransformStamped()
    t.header.frame_id, t.child_frame_id = "map", "base_link"
    t.header.stamp.sec, t.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (float(v) for v in p)
    t.transform.rotation.z, t.transform.rotation.w = float(np.sin(yaw / 2)), float(np.cos(yaw / 2))
    return t


def images(k: int) -> list[np.ndarray]:
    return [make_image(i, 100 + k) for i in range(6)]


def reference(frames: list[int]) -> dict:
    """run_frames on the IN.npz layout (imgs camera-major (1, 6F, ...), matrices frame-major), frames newest first:
    the official answer for those sets; the set indexes ``k`` give images and per-camera ego poses."""
    from flashocc_ros.inference.temporal import TemporalPipeline
    from flashocc_ros.network.preprocess import augmentation_for, preprocess_images
    from test.model4d_helpers import seed0_model_4d

    f = len(frames)
    imgs = np.stack([preprocess_images(images(k)) for k in frames])  # (F, 6, 3, 256, 704)
    e2g = np.stack([[ego2global(s) for s in camera_stamps(key_stamp(k))] for k in frames])
    aug = augmentation_for((H, W))
    s2e = np.stack([sensor2ego(c) for c in CAMERA_NAMES])
    K = np.stack([intrinsics(c) for c in CAMERA_NAMES])
    inputs = {
        "imgs": np.ascontiguousarray(imgs.transpose(1, 0, 2, 3, 4)).reshape(1, 6 * f, *imgs.shape[2:]),
        "sensor2egos": np.broadcast_to(s2e, (f, 6, 4, 4)).reshape(1, 6 * f, 4, 4).astype(np.float32),
        "ego2globals": e2g.reshape(1, 6 * f, 4, 4).astype(np.float32),
        "intrins": np.broadcast_to(K, (f, 6, 3, 3)).reshape(1, 6 * f, 3, 3).astype(np.float32),
        "post_rots": np.broadcast_to(aug.post_rot, (1, 6 * f, 3, 3)).astype(np.float32),
        "post_trans": np.broadcast_to(aug.post_tran, (1, 6 * f, 3)).astype(np.float32),
        "bda": np.eye(3, dtype=np.float32),
    }
    cfg = load_config(overrides={"model": {"variant": VARIANT, "device": "cpu", "pano_mode": "official"}})
    result = TemporalPipeline(cfg, model=seed0_model_4d(VARIANT), with_logits=True).run_frames(inputs)
    return {
        "occ_label": result.semantic,
        "logits": result.logits,
        "pano_inst": result.panoptic,
        **result.centers.numpy(),
        **result.center_maps,
    }


def decode(msgs: dict, stamp_ns: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Semantic labels, panoptic ids and centres (head-class labels, score order) from the messages' layout."""
    sem_msg, pano_msg = msgs["semantic"], msgs["panoptic"]
    for msg in (sem_msg, pano_msg.semantic):
        assert msg.header.frame_id == "base_link"
        assert int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec) == stamp_ns
    assert (sem_msg.size_x, sem_msg.size_y, sem_msg.size_z) == (200, 200, 16) and sem_msg.free_index == 17
    semantic = np.frombuffer(bytes(sem_msg.labels), dtype=np.uint8).reshape(200, 200, 16)
    np.testing.assert_array_equal(np.frombuffer(bytes(pano_msg.semantic.labels), np.uint8).reshape(200, 200, 16),
                                  semantic)  # fmt: skip
    assert pano_msg.mode == "official"
    pano = np.asarray(pano_msg.panoptic, dtype=np.int64).reshape(200, 200, 16)
    rows = sorted(pano_msg.instances, key=lambda i: -i.score)
    assert all(i.id >= 18 for i in rows)
    assert set(np.unique(pano[pano >= 18]).tolist()) <= {int(i.id) for i in rows}
    centers = {
        "centers_xyz": np.array([[i.center.x, i.center.y, i.center.z] for i in rows], np.float32).reshape(-1, 3),
        "centers_score": np.array([i.score for i in rows], np.float32),
        "centers_label": np.array([OFFICIAL_HEAD_TO_OCC.index(int(i.class_index)) for i in rows], np.int64),
    }
    return semantic, pano, centers


def check_against(msgs: dict, stamp_ns: int, ref: dict) -> None:
    semantic, pano, centers = decode(msgs, stamp_ns)
    tolerance = PYTORCH_LOGIT_REL_TOL * float(ref["logits"].std())
    near_ties = int((top2_margin(ref["logits"]) < LABEL_MARGIN).sum())
    check_labels(semantic, ref["occ_label"], ref["logits"], near_ties, tolerance)
    match = check_centers(centers, ref, ref["center_heatmap"], ref["center_reg"])
    check_panoptic(pano, ref["pano_inst"], semantic, ref["occ_label"], centers, ref, match)


def test_temporal_node_fuses_the_keyframe_spaced_history_and_resets_on_a_bag_loop(tmp_path_factory):
    require_ros()
    env = _module_env(tmp_path_factory)
    node = NodeProcess(env, PARAMS)
    try:
        # The offline answers, computed while the node starts (both take seconds).
        keyframes = reference([6, 0])  # the set at t0 + 0.5 s with the set at t0 as its previous keyframe
        first = reference([0, 0])  # the set at t0 with no history: the current frame repeated
        ctx = _context(env)
        driver = Driver(ctx, "raw")
        driver.node_log = node.log
        driver.outputs["panoptic"] = {}
        _subscribe_panoptic(driver)
        try:
            driver.publish_tf_static()
            driver.wait_connected()
            driver.publish_infos()
            driver.spin_for(0.2)
            keys = ("semantic", "panoptic", "timing")

            def send(k: int) -> None:
                from tf2_msgs.msg import TFMessage

                stamps = camera_stamps(key_stamp(k))
                driver.tf_pub.publish(TFMessage(transforms=[pose_message(s) for s in stamps]))
                driver.spin_for(0.05)
                driver.publish_set(key_stamp(k), images(k))

            # 0. a set without ego poses on /tf (no map frame yet): skipped with a clear warning, never processed
            driver.publish_set(key_stamp(-1), images(-1))
            driver.spin_for(0.3)
            # 1. t0, then the in-between 12 Hz sets while the node is busy
            for k in range(6):
                send(k)
            out_first = driver.wait_output(key_stamp(0), OUTPUT_TIMEOUT, keys)
            between = [key_stamp(k) for k in range(1, 6)]
            wait_for(lambda: any(s in driver.outputs["timing"] for s in between), OUTPUT_TIMEOUT, driver.spin,
                     f"an output for an in-between set; node log:\n{node.log()[-3000:]}")  # fmt: skip
            # 2. the keyframe-spaced set
            send(6)
            out_key = driver.wait_output(key_stamp(6), OUTPUT_TIMEOUT, keys)
            processed_between = sorted(s for s in between if s in driver.outputs["timing"])
            n_out = 2 + len(processed_between)
            diag_key = driver.wait_diagnostic(
                lambda lvl, msg, v: v.get("frames_processed") == str(n_out), "after the keyframe-spaced set"
            )
            # 3. bag loop: t0 again
            for key in driver.outputs:
                driver.outputs[key].pop(key_stamp(0), None)
            start = len(driver.diagnostics)
            send(0)
            out_loop = driver.wait_output(key_stamp(0), OUTPUT_TIMEOUT, keys)
            diag_loop = driver.wait_diagnostic(
                lambda lvl, msg, v: v.get("frames_processed") == str(n_out + 1), "after the bag loop", start
            )
        finally:
            driver.close()
            ctx.try_shutdown()
    finally:
        code = node.stop()
    log = node.log()
    assert code == 0, log[-3000:]
    assert "processing failed" not in log, log[-3000:]
    skipped = [line for line in log.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "WARN" in skipped[0], skipped
    assert "temporal variants need the tf.world_frame -> ego TF" in skipped[0], skipped
    assert f"set at {key_stamp(-1) * 1e-9:.3f} s skipped" in skipped[0], skipped
    assert key_stamp(-1) not in driver.outputs["timing"]

    # (b) the in-between sets were processed (and so are in the history) ...
    assert processed_between, "no in-between set was processed"
    # (a) ... yet the set at t0 + 0.5 s fused the one at t0: the official answer for the keyframe-spaced frames
    check_against(out_key, key_stamp(6), keyframes)
    # (d) /diagnostics: one previous keyframe of one used; every processed set is in the history (0.6 s span)
    level, message, values = diag_key
    assert values["history_depth"] == "1/1", (message, values)
    assert values["history_frames"] == str(n_out) and values["history_resets"] == "0", values
    assert float(values["history_mb"]) > 0 and "temporal history short" not in message, (level, message)
    # (c) the bag loop reset the history once, with one warning, and the output is the first-frame answer
    resets = [line for line in log.splitlines() if "temporal history reset" in line]
    assert len(resets) == 1 and "time went back" in resets[0] and "WARN" in resets[0], resets
    check_against(out_loop, key_stamp(0), first)
    check_against(out_first, key_stamp(0), first)
    level, message, values = diag_loop
    assert values["history_depth"] == "0/1" and values["history_resets"] == "1", values
    assert values["history_frames"] == "1" and "temporal history short" not in message, (level, message, values)


def _subscribe_panoptic(driver: Driver) -> None:
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from flashocc_ros.msg import PanopticOccupancy

    def keep(msg) -> None:  # PanopticOccupancy carries its stamp in .semantic.header
        stamp = msg.semantic.header.stamp
        driver.outputs["panoptic"][int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)] = msg

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    driver.node.create_subscription(PanopticOccupancy, "/occupancy/panoptic", keep, reliable)
