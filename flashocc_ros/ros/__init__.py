"""The ROS edge: everything the node needs besides the node itself. Rig assembly (rig), camera-set
synchronisation (sync), the built-in TF tree (tf_tree), health / diagnostics rules (health), rate-limited logs,
message conversion (messages), launch helpers: ROS-free and unit-tested without rclpy. Only parameters, qos and
tf_source import rclpy (they are the node's own helpers)."""
