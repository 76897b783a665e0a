"""flashocc_ros: FlashOcc / Panoptic-FlashOcc occupancy for ROS 2.

The pure core (config, geometry, preprocess, model, panoptic, backends, metrics, dataset tools) imports nothing
from ROS; `flashocc_ros.node` is the thin rclpy layer. The generated interfaces live in `flashocc_ros.msg`.
"""

# The generated interfaces (flashocc_ros.msg) may be installed in another directory than these modules (pip
# editable install next to a cmake-built msg package). extend_path makes every `flashocc_ros` directory on
# sys.path part of this package, so `import flashocc_ros.msg` works in both layouts.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
