"""pip installation of flashocc_ros (the colcon path uses CMakeLists.txt; both install the same package).

Extras:
  offline : model, ONNX, evaluation, converter, rendering tools (no ROS needed)
  ros     : the ROS 2 Kilted wheels from PyPI (rclpy + messages) for a pip-only ROS graph
  tensorrt: TensorRT engines (needs an NVIDIA GPU)
  view    : Open3D interactive viewer
  dev     : tests and lint
torch is not listed as a hard requirement so that pip never replaces an installed (CPU or CUDA) torch.
"""

from glob import glob

from setuptools import find_packages, setup

OFFLINE = [
    "numpy<2",
    "pyyaml",
    "Pillow",
    "simplejpeg",
    "opencv-python-headless",
    "onnx",
    "onnxruntime",
    "rosbags",
    "mcap",
    "nuscenes-devkit",
    "tqdm",
    "matplotlib",
    "imageio",
    "imageio-ffmpeg",
]
ROS = [
    "ros-kilted-rclpy",
    "ros-kilted-rmw-fastrtps-cpp",
    "ros-kilted-builtin-interfaces",
    "ros-kilted-std-msgs",
    "ros-kilted-geometry-msgs",
    "ros-kilted-sensor-msgs",
    "ros-kilted-visualization-msgs",
    "ros-kilted-diagnostic-msgs",
]

setup(
    name="flashocc_ros",
    version="0.1.0",
    description="FlashOcc / Panoptic-FlashOcc camera-only 3D occupancy for ROS 2",
    packages=find_packages(include=["flashocc_ros", "flashocc_ros.*"]),
    python_requires=">=3.10",
    install_requires=["numpy", "pyyaml"],
    extras_require={
        "offline": OFFLINE,
        "ros": ROS,
        "tensorrt": ["tensorrt>=10"],  # device buffers are CUDA tensors of PyTorch: no cuda-python
        "view": ["open3d"],
        "dev": ["pytest", "pytest-timeout", "ruff"],
    },
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/flashocc_ros"]),
        ("share/flashocc_ros", ["package.xml"]),
        ("share/flashocc_ros/msg", sorted(glob("msg/*.msg"))),
        ("share/flashocc_ros/config", sorted(glob("config/*.*"))),
        ("share/flashocc_ros/launch", sorted(glob("launch/*.py"))),
    ],
    entry_points={
        "console_scripts": [
            "flashocc_node = flashocc_ros.node:main",
            "flashocc-infer = flashocc_ros.tools.infer:main",
            "flashocc-convert-ckpt = flashocc_ros.tools.convert_checkpoint:main",
            "flashocc-export = flashocc_ros.tools.export:main",
            "flashocc-eval = flashocc_ros.tools.evaluate:main",
            "flashocc-predict = flashocc_ros.tools.predict:main",
            "flashocc-nusc2bag = flashocc_ros.tools.nusc2bag:main",
            "flashocc-play = flashocc_ros.tools.play:main",
            "flashocc-record = flashocc_ros.tools.record:main",
            "flashocc-view = flashocc_ros.tools.view:main",
            "flashocc-render = flashocc_ros.tools.render:main",
            "flashocc-demo = flashocc_ros.tools.demo:main",
        ]
    },
)
