"""QoS profiles of the node's endpoints (rclpy), in one place. Bags written without ROS use `bagio.make_qos`."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data


def keep_last(depth: int, reliability: ReliabilityPolicy, durability: DurabilityPolicy) -> QoSProfile:
    """A keep-last profile of history `depth` (the shape of every profile of the node)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability, durability=durability)


def sensor_qos(depth: int) -> QoSProfile:
    """Camera images and CameraInfo: sensor-data QoS (best effort, volatile) with history `depth`."""
    return keep_last(depth, qos_profile_sensor_data.reliability, qos_profile_sensor_data.durability)


def output_qos(depth: int) -> QoSProfile:
    """The node's outputs: reliable, volatile, history `depth`."""
    return keep_last(depth, ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE)


def tf_qos(static: bool) -> QoSProfile:
    """/tf_static (transient local, as tf2's static broadcaster) or /tf: reliable, depth 100 (tf2's listener)."""
    durability = DurabilityPolicy.TRANSIENT_LOCAL if static else DurabilityPolicy.VOLATILE
    return keep_last(100, ReliabilityPolicy.RELIABLE, durability)
