"""Images + calibration -> occupancy on any backend: OccupancyPipeline (single-frame) and TemporalPipeline
(streaming history for the temporal variants). No ROS."""
