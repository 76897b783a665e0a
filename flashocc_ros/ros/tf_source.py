"""The node's transform source: tf2_ros where installed, else the built-in /tf_static + /tf reader
(`rig.TransformTreeSource`, fed by the node's /tf callbacks). What is looked up, and when, is rig.py's business."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from flashocc_ros import topics
from flashocc_ros.config import ConfigError
from flashocc_ros.ros.qos import tf_qos
from flashocc_ros.ros.rig import Tf2BufferSource, TransformSource, TransformTreeSource

TF_CACHE_TIME_S = 10.0  # history of dynamic transforms kept by the built-in reader (tf2's default cache time)


def transform_source(
    node: Any, need_extrinsics: bool, world: str, use_tf2_ros: bool, on_tf: Callable[[bool, Any], None]
) -> tuple[TransformSource | None, list]:
    """(transform source, handles to keep alive) for `node`. The source is None when neither camera extrinsics
    nor ego poses (`world` frame) are needed. The built-in reader subscribes /tf_static and /tf with
    `on_tf(static, msg)`; ConfigError when the extrinsics are needed and neither tf2_ros nor tf2_msgs is installed."""
    if not need_extrinsics and not world:
        return None, []
    what = "camera extrinsics and ego poses" if need_extrinsics else "ego poses"
    if use_tf2_ros:
        try:
            import tf2_ros
        except ImportError:
            pass
        else:
            buffer = tf2_ros.Buffer()
            listener = tf2_ros.TransformListener(buffer, node, spin_thread=False)
            node.get_logger().info(f"{what} from tf2_ros")
            return Tf2BufferSource(buffer, tf2_ros), [listener]
    try:
        from tf2_msgs.msg import TFMessage
    except ImportError as exc:
        if not need_extrinsics:
            node.get_logger().warning(
                f"tf.world_frame is '{world}' but neither tf2_ros nor tf2_msgs is installed: ego-motion "
                "compensation is OFF (all six cameras share one ego pose)"
            )
            return None, []
        raise ConfigError(
            "cameras.calibration_file is empty and neither tf2_ros nor tf2_msgs is installed: "
            "install ROS tf2 or give a calibration file"
        ) from exc
    tree = TransformTreeSource(TF_CACHE_TIME_S)
    subscriptions = [
        node.create_subscription(TFMessage, topics.TF_STATIC_TOPIC, partial(on_tf, True), tf_qos(True)),
        node.create_subscription(TFMessage, topics.TF_TOPIC, partial(on_tf, False), tf_qos(False)),
    ]
    node.get_logger().info(f"{what} from the built-in /tf_static + /tf reader (tf2_ros not installed)")
    return tree, subscriptions
