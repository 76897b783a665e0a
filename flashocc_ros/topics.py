"""Topic names of the package, in one place: what the node subscribes to and publishes, what the converter writes
into bags, what play/record, evaluation, INT8 calibration and the renderers read. No ROS imports.

Camera topics are patterns with ``{camera}`` (a name of ``config.CAMERA_NAMES``), following image_transport's
naming: ``/{camera}/image`` (raw) with ``/{camera}/image/compressed`` beside it.
"""

from __future__ import annotations

# Inputs
COMPRESSED_IMAGE_TOPIC = "/{camera}/image/compressed"  # sensor_msgs/CompressedImage (JPEG), the default transport
RAW_IMAGE_TOPIC = "/{camera}/image"  # sensor_msgs/Image (rgb8 / bgr8)
CAMERA_INFO_TOPIC = "/{camera}/camera_info"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
CLOCK_TOPIC = "/clock"

# Written by the converter beside the camera streams
SAMPLE_TOPIC = "/nuscenes/sample"
GROUND_TRUTH_TOPIC = "/occupancy/ground_truth"
LIDAR_TOPIC = "/LIDAR_TOP/points"

# Published by flashocc_node
SEMANTIC_TOPIC = "/occupancy/semantic"
PANOPTIC_TOPIC = "/occupancy/panoptic"
POINTS_TOPIC = "/occupancy/points"
MARKERS_TOPIC = "/occupancy/markers"
TIMING_TOPIC = "/occupancy/timing"
DIAGNOSTICS_TOPIC = "/diagnostics"


def camera_topic(pattern: str, camera: str) -> str:
    """``pattern`` with ``{camera}`` replaced; ValueError naming the pattern when it has no ``{camera}``."""
    if "{camera}" not in pattern:
        raise ValueError(f"topic pattern {pattern!r} must contain '{{camera}}'")
    return pattern.format(camera=camera)
