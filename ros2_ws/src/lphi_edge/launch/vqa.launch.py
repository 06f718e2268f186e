"""ros2 launch lphi_edge vqa.launch.py [model:=...] [backend:=...] [device:=...] [params_file:=...]
                                      [image_topic:=/camera/image_raw] [camera:=true camera_source:=0]

Starts vqa_node with config/vqa.yaml (or params_file); model / backend / device given here override the
file. `image_topic` remaps the node's `image` (and `image/compressed`) input. `camera:=true` also starts
camera_node (source `camera_source`: shapes | device index | video file | folder) publishing there.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node

ARGUMENTS = {
    "model": ("", "checkpoint / export directory or shipped model name (default: the params file's)"),
    "backend": ("", "torch | onnxruntime | tensorrt (default: the params file's)"),
    "device": ("", "cpu | cuda | cuda:N (default: the params file's)"),
    "params_file": ("", "vqa_node parameters YAML (default: this package's config/vqa.yaml)"),
    "image_topic": ("image", "camera topic the node subscribes to (sensor_msgs/Image)"),
    "camera": ("false", "also start camera_node publishing on image_topic"),
    "camera_source": ("shapes", "camera_node source: shapes | device index | video file | folder"),
    "camera_rate_hz": ("10.0", "camera_node frame rate"),
}


def _nodes(context):
    arg = {name: context.launch_configurations[name] for name in ARGUMENTS}
    params_file = arg["params_file"] or os.path.join(get_package_share_directory("lphi_edge"), "config", "vqa.yaml")
    overrides = {k: arg[k] for k in ("model", "backend", "device") if arg[k]}
    topic = arg["image_topic"]
    nodes = [
        Node(
            package="lphi_edge",
            executable="vqa_node",
            name="vqa_node",
            output="screen",
            emulate_tty=True,
            parameters=[params_file, overrides] if overrides else [params_file],
            remappings=[("image", topic), ("image/compressed", topic.rstrip("/") + "/compressed")],
        )
    ]
    if arg["camera"].lower() in ("true", "1", "yes"):
        nodes.append(
            Node(
                package="lphi_edge",
                executable="camera_node",
                name="camera_node",
                output="screen",
                parameters=[{"source": arg["camera_source"], "rate_hz": float(arg["camera_rate_hz"])}],
                remappings=[("image", topic)],
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
