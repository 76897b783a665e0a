"""Peer process for the message tests: publishes deterministic occupancy / TF messages, then spins.

Usage: python -m test.peers.occupancy_publisher {occupancy|tf_static} SEED
"""

from __future__ import annotations

import array
import sys

import numpy as np
import rclpy
from geometry_msgs.msg import TransformStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from flashocc_ros import config as C
from flashocc_ros.msg import OccupancyInstance, PanopticOccupancy, SemanticOccupancy


def expected_grids(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C.NUM_CLASSES, size=C.OCC_GRID.shape, dtype=np.uint8)
    panoptic = rng.integers(0, 600, size=C.OCC_GRID.shape).astype(np.uint16)
    return labels, panoptic


def expected_static_transforms() -> list[tuple[str, str, tuple[float, ...]]]:
    return [("base_link", cam, (1.0 + i, -0.5 * i, 1.5, 0.5, -0.5, 0.5, -0.5)) for i, cam in enumerate(C.CAMERA_NAMES)]


def semantic_message(labels: np.ndarray, stamp_ns: int) -> SemanticOccupancy:
    g = C.OCC_GRID
    msg = SemanticOccupancy()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = "base_link"
    msg.origin.x, msg.origin.y, msg.origin.z = g.lower
    msg.voxel_size.x = msg.voxel_size.y = msg.voxel_size.z = g.voxel_size
    msg.size_x, msg.size_y, msg.size_z = g.shape
    msg.class_names = list(C.CLASS_NAMES)
    msg.free_index = C.FREE_INDEX
    msg.labels = labels.tobytes()
    msg.source = "test"
    return msg


def main() -> int:
    kind, seed = sys.argv[1], int(sys.argv[2])
    rclpy.init()
    node = rclpy.create_node("occupancy_test_publisher")
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    if kind == "occupancy":
        labels, panoptic = expected_grids(seed)
        sem_pub = node.create_publisher(SemanticOccupancy, "/test/semantic", latched)
        pano_pub = node.create_publisher(PanopticOccupancy, "/test/panoptic", latched)
        sem = semantic_message(labels, 1_533_151_603_512_404_000)
        pano = PanopticOccupancy()
        pano.semantic = semantic_message(labels, 1_533_151_603_512_404_000)
        pano.mode = "corrected"
        pano.panoptic = array.array("H", panoptic.astype("<u2").tobytes())
        inst = OccupancyInstance(id=18, class_index=4, score=0.75, voxel_count=123)
        inst.center.x, inst.center.y, inst.center.z = 1.25, -3.5, 0.5
        pano.instances = [inst]
        sem_pub.publish(sem)
        pano_pub.publish(pano)
    elif kind == "tf_static":
        from tf2_msgs.msg import TFMessage

        pub = node.create_publisher(TFMessage, "/tf_static", latched)
        msg = TFMessage()
        for parent, child, (x, y, z, qx, qy, qz, qw) in expected_static_transforms():
            t = TransformStamped()
            t.header.frame_id, t.child_frame_id = parent, child
            t.header.stamp.sec = 1533151603
            t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = x, y, z
            r = t.transform.rotation
            r.x, r.y, r.z, r.w = qx, qy, qz, qw
            msg.transforms.append(t)
        pub.publish(msg)
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    print("published", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
