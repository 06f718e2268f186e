"""ros2 launch lphi_edge vqa.launch.py [model:=...] [backend:=...] [device:=...] [params_file:=...]
                                      [image_topic:=/camera/image_raw] [camera:=true camera_source:=0]
                                      [autostart:=false] [dds_transports:=LARGE_DATA]

Starts vqa_node as a lifecycle node with config/vqa.yaml (or params_file); model / backend / device / autostart
given here override the file. With `autostart` (default true) the node configures and activates itself; with
autostart:=false a lifecycle manager (or `ros2 lifecycle set /vqa_node configure`) brings it up. `image_topic`
remaps the node's `image` (and `image/compressed`) input — the single-camera setup; for several cameras set
`cameras` in the params file and remap `<name>/image` per camera. `camera:=true` also starts camera_node
(source `camera_source`: shapes | device index | video file | folder) publishing on image_topic.

Large frames: every process started here gets FASTDDS_BUILTIN_TRANSPORTS=`dds_transports` (default: the
environment's value, else LARGE_DATA), so 1280×720 and 1920×1080 frames at 30 Hz arrive over Fast DDS (its default
transports lose most of them). A camera driver started elsewhere needs the same variable (ros2_ws/README.md).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import LifecycleNode, Node

ARGUMENTS = {
    "model": ("", "checkpoint / export directory or shipped model name (default: the params file's)"),
    "backend": ("", "torch | onnxruntime | tensorrt (default: the params file's)"),
    "device": ("", "cpu | cuda | cuda:N (default: the params file's)"),
    "autostart": ("", "true | false: configure and activate at start-up (default: the params file's, true)"),
    "params_file": ("", "vqa_node parameters YAML (default: this package's config/vqa.yaml)"),
    "image_topic": ("image", "camera topic the node subscribes to (sensor_msgs/Image)"),
    "camera": ("false", "also start camera_node publishing on image_topic"),
    "camera_source": ("shapes", "camera_node source: shapes | device index | video file | folder"),
    "camera_rate_hz": ("10.0", "camera_node frame rate"),
    "dds_transports": ("", "FASTDDS_BUILTIN_TRANSPORTS for the nodes (default: the environment's, else LARGE_DATA)"),
}
TRUE = ("true", "1", "yes")


def _nodes(context):
    arg = {name: context.launch_configurations[name] for name in ARGUMENTS}
    params_file = arg["params_file"] or os.path.join(get_package_share_directory("lphi_edge"), "config", "vqa.yaml")
    overrides = {k: arg[k] for k in ("model", "backend", "device") if arg[k]}
    if arg["autostart"]:
        overrides["autostart"] = arg["autostart"].lower() in TRUE
    transports = arg["dds_transports"] or os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    env = {"FASTDDS_BUILTIN_TRANSPORTS": transports}
    topic = arg["image_topic"]
    nodes = [
        LifecycleNode(
            package="lphi_edge",
            executable="vqa_node",
            name="vqa_node",
            namespace="",
            output="screen",
            emulate_tty=True,
            parameters=[params_file, overrides] if overrides else [params_file],
            remappings=[("image", topic), ("image/compressed", topic.rstrip("/") + "/compressed")],
            additional_env=env,
        )
    ]
    if arg["camera"].lower() in TRUE:
        nodes.append(
            Node(
                package="lphi_edge",
                executable="camera_node",
                name="camera_node",
                output="screen",
                parameters=[{"source": arg["camera_source"], "rate_hz": float(arg["camera_rate_hz"])}],
                remappings=[("image", topic)],
                additional_env=env,
            )
        )
    return nodes


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(name, default_value=default, description=doc)
            for name, (default, doc) in ARGUMENTS.items()
        ]
        + [OpaqueFunction(function=_nodes)]
    )
