"""The ament_python package `lphi_edge` (ros2_ws/src/lphi_edge): checked statically, since `launch`,
`launch_ros` and colcon have no PyPI wheels here. The nodes it starts are tested in test_ros_node.py."""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from lphi_edge.ros import vqa_node

PKG = Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / "lphi_edge"


def test_package_manifest_and_entry_points():
    root = ET.parse(PKG / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "lphi_edge"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "std_msgs", "sensor_msgs", "diagnostic_msgs", "launch_ros"} <= deps
    assert (PKG / "resource" / "lphi_edge").is_file()
    assert "script_dir=$base/lib/lphi_edge" in (PKG / "setup.cfg").read_text()
    setup = (PKG / "setup.py").read_text()
    for exe, module in (("vqa_node", "vqa_node"), ("camera_node", "camera_node")):
        assert f'"{exe} = lphi_edge_ros.{module}:main"' in setup
        shim = (PKG / "lphi_edge_ros" / f"{module}.py").read_text()
        assert f"from lphi_edge.ros.{module} import main" in shim
    assert 'glob("launch/*.launch.py")' in setup and 'glob("config/*.yaml")' in setup


def test_params_file_sets_exactly_the_declared_parameters_with_valid_values():
    params = yaml.safe_load((PKG / "config" / "vqa.yaml").read_text())["vqa_node"]["ros__parameters"]
    assert set(params) == set(vqa_node.PARAMETERS)
    for name, value in params.items():
        default = vqa_node.PARAMETERS[name][0]
        assert type(value) is type(default), name  # ROS parameter types are fixed at declaration
        assert vqa_node.check_parameter(name, value) is None, name


def test_launch_file_arguments_and_nodes():
    tree = ast.parse((PKG / "launch" / "vqa.launch.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        a.attr for a in ast.walk(tree) if isinstance(a, ast.Attribute)
    }
    assert "generate_launch_description" in {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("launch_ros.actions", "Node") in imports and ("launch.actions", "DeclareLaunchArgument") in imports
    args = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "ARGUMENTS")
    declared = {k.value for k in args.value.keys}
    assert {"model", "backend", "device", "params_file", "image_topic"} <= declared
    consts = {c.value for c in ast.walk(tree) if isinstance(c, ast.Constant)}
    assert {"vqa_node", "camera_node", "lphi_edge", "image", "image/compressed"} <= consts
    assert "OpaqueFunction" in names


def test_the_core_library_and_the_node_engine_never_import_rclpy():
    import subprocess
    import sys

    code = (
        "import sys, lphi_edge, lphi_edge.assistant, lphi_edge.ros.frames, lphi_edge.ros.answerer\n"
        "assert 'rclpy' not in sys.modules, 'rclpy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
