"""ros2 launch flashocc_ros flashocc.launch.py [variant:=...] [checkpoint:=...] [engine:=...] [backend:=...]
[params_file:=...] [transport:=compressed|raw] [use_sim_time:=true|false] [rviz:=true|false] [bag:=PATH]

Starts flashocc_node with config/<variant>.yaml (or params_file), the shipped Fast DDS profile, optionally RViz
with config/flashocc.rviz and a bag player (ros2 bag play, or flashocc-play where rosbag2 is missing).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from flashocc_ros.config import DEFAULT_VARIANT
from flashocc_ros.ros.launch_support import (
    fastdds_profile,
    parameter_overrides,
    params_file_for,
    player_command,
    share_dir,
)

ARGUMENTS = {
    "variant": (DEFAULT_VARIANT, "official config name of the model variant"),
    "checkpoint": ("", "official .pth checkpoint (empty: deterministic untrained weights, with a warning)"),
    "engine": ("", "TensorRT engine or ONNX file for the tensorrt/onnxruntime backends"),
    "backend": ("", "auto | tensorrt | onnxruntime | pytorch (empty: value of the params file)"),
    "params_file": ("", "parameters YAML (empty: config/<variant>.yaml)"),
    "transport": ("", "compressed | raw camera transport (empty: value of the params file)"),
    "use_sim_time": ("false", "use /clock (set true when replaying bags)"),
    "rviz": ("false", "start RViz with config/flashocc.rviz"),
    "bag": ("", "rosbag2 directory to play into the node"),
}


def _actions(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    use_sim_time = arg("use_sim_time").lower() == "true"
    variant = arg("variant")
    params = parameter_overrides(variant, arg("checkpoint"), arg("engine"), arg("backend"), arg("transport"))
    params["use_sim_time"] = use_sim_time
    actions = [
        Node(
            package="flashocc_ros",
            executable="flashocc_node",
            name="flashocc_node",
            output="screen",
            parameters=[str(params_file_for(variant, arg("params_file"))), params],
        )
    ]
    if arg("bag"):
        actions.append(ExecuteProcess(cmd=player_command(arg("bag"), use_sim_time), output="screen"))
    return actions


def generate_launch_description():
    declared = [DeclareLaunchArgument(n, default_value=d, description=h) for n, (d, h) in ARGUMENTS.items()]
    return LaunchDescription(
        [
            *declared,
            SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", str(fastdds_profile())),
            OpaqueFunction(function=_actions),
            Node(
                package="rviz2",
                executable="rviz2",
                arguments=["-d", str(share_dir() / "config" / "flashocc.rviz")],
                condition=IfCondition(LaunchConfiguration("rviz")),
                parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
            ),
        ]
    )
