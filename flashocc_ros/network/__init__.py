"""The network and its exact pre/post-processing: FlashOcc / Panoptic-FlashOcc models (single-frame and
temporal), their geometry (frustum, voxel pooling, ego transforms), checkpoints and weights, the official image
preprocessing and the centre / panoptic post-processing. Pure torch / numpy, no ROS, no files but checkpoints."""
