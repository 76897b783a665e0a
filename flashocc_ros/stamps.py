"""Time stamps in one convention: integer nanoseconds (no ROS import).

``builtin_interfaces/Time`` (rclpy or rosbags message, or a Header holding one) <-> int ns, nuScenes microseconds.
"""

from __future__ import annotations

from typing import Any

NS_PER_S = 1_000_000_000


def stamp_to_ns(header_or_stamp: Any) -> int:
    """builtin_interfaces/Time (or a Header) -> integer nanoseconds (rosbags and rclpy messages alike)."""
    stamp = getattr(header_or_stamp, "stamp", header_or_stamp)
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def split_ns(stamp_ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) of a builtin_interfaces/Time."""
    return int(stamp_ns) // NS_PER_S, int(stamp_ns) % NS_PER_S


def ns_from_us(timestamp_us: int) -> int:
    """nuScenes microseconds -> nanoseconds, exactly."""
    return int(timestamp_us) * 1000
