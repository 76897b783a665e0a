"""The package's interfaces over real DDS between two processes (pip-only ROS 2 Kilted here)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from flashocc_ros import config as C

from .conftest import REPO_ROOT, wait_for

pytestmark = pytest.mark.ros


def start_peer(kind: str, seed: int, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "test.peers.occupancy_publisher", kind, str(seed)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.strip() == "published", f"peer failed: {line}{proc.stdout.read() if proc.poll() is not None else ''}"
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def latched_qos():
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def test_semantic_and_panoptic_round_trip_exactly(rclpy_context, ros_env):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from flashocc_ros.msg import PanopticOccupancy, SemanticOccupancy

    from .peers.occupancy_publisher import expected_grids

    proc = start_peer("occupancy", 7, ros_env)
    try:
        node = rclpy.create_node("occupancy_test_subscriber", context=rclpy_context)
        executor = SingleThreadedExecutor(context=rclpy_context)
        executor.add_node(node)
        got = {}
        node.create_subscription(SemanticOccupancy, "/test/semantic", lambda m: got.setdefault("sem", m), latched_qos())
        node.create_subscription(
            PanopticOccupancy, "/test/panoptic", lambda m: got.setdefault("pano", m), latched_qos()
        )
        wait_for(lambda: len(got) == 2, 20, lambda: executor.spin_once(0.1), "both occupancy messages")
    finally:
        stop(proc)

    labels, panoptic = expected_grids(7)
    sem, pano = got["sem"], got["pano"]
    for msg in (sem, pano.semantic):
        assert (msg.size_x, msg.size_y, msg.size_z) == C.OCC_GRID.shape
        assert (msg.origin.x, msg.origin.y, msg.origin.z) == C.OCC_GRID.lower
        assert msg.voxel_size.x == pytest.approx(0.4)
        assert list(msg.class_names) == list(C.CLASS_NAMES) and msg.free_index == 17
        assert msg.header.frame_id == "base_link"
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1533151603, 512404000)
        received = np.frombuffer(bytes(msg.labels), np.uint8).reshape(C.OCC_GRID.shape)
        np.testing.assert_array_equal(received, labels)
        assert len(msg.mask_camera) == 0 and len(msg.mask_lidar) == 0
    np.testing.assert_array_equal(np.frombuffer(pano.panoptic, np.uint16).reshape(C.OCC_GRID.shape), panoptic)
    assert pano.mode == "corrected"
    (inst,) = pano.instances
    assert (inst.id, inst.class_index, inst.voxel_count) == (18, 4, 123)
    assert (inst.center.x, inst.center.y, inst.center.z) == (1.25, -3.5, 0.5)
    assert inst.score == pytest.approx(0.75)


def test_tf_static_late_joiner_receives_transient_local(rclpy_context, ros_env):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from tf2_msgs.msg import TFMessage

    from .peers.occupancy_publisher import expected_static_transforms

    proc = start_peer("tf_static", 0, ros_env)  # publishes before anybody subscribes
    try:
        node = rclpy.create_node("tf_static_late_joiner", context=rclpy_context)
        executor = SingleThreadedExecutor(context=rclpy_context)
        executor.add_node(node)
        got = []
        node.create_subscription(TFMessage, "/tf_static", got.append, latched_qos())
        wait_for(lambda: got, 20, lambda: executor.spin_once(0.1), "/tf_static from a late-joined subscriber")
    finally:
        stop(proc)
    received = [
        (
            t.header.frame_id,
            t.child_frame_id,
            (
                t.transform.translation.x,
                t.transform.translation.y,
                t.transform.translation.z,
                t.transform.rotation.x,
                t.transform.rotation.y,
                t.transform.rotation.z,
                t.transform.rotation.w,
            ),
        )
        for t in got[0].transforms
    ]
    assert received == expected_static_transforms()


def test_tf_message_copy_has_upstream_type_hash():
    """The test-only tf2_msgs copy must be wire-compatible with real ROS 2: its generated type hash equals the
    RIHS01 hash rosbags' Kilted typestore holds for the upstream tf2_msgs/msg/TFMessage."""
    import json
    import os
    from pathlib import Path

    from rosbags.typesys import Stores, get_typestore

    prefix = Path(os.environ.get("AMENT_PREFIX_PATH", sys.prefix).split(os.pathsep)[0])
    desc = json.loads((prefix / "share" / "tf2_msgs" / "msg" / "TFMessage.json").read_text())
    ours = {h["type_name"]: h["hash_string"] for h in desc["type_hashes"]}["tf2_msgs/msg/TFMessage"]
    assert ours == get_typestore(Stores.ROS2_KILTED).hash_rihs01("tf2_msgs/msg/TFMessage")
