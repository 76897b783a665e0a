"""nuScenes data: a synthetic nuScenes-format dataset generator (tests, demo) and the nuScenes -> rosbag2 converter.

Modules are imported explicitly (``flashocc_ros.dataset.synthetic``, ``flashocc_ros.dataset.nusc2bag``) so that
importing the package stays cheap.
"""
