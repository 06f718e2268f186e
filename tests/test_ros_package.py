"""The ROS 2 packages in ros2_ws/src, checked as files: `lphi_edge` (ament_python: manifest, entry points, params
file, launch file) and `lphi_edge_interfaces` (ament_cmake: Ask.action, Answer.msg). colcon builds both for real in
`make test` (test_ros_node.py / test_ros_action.py start what it installs); `launch`, `launch_ros` and the `ros2` CLI
have no wheels here, so the launch file runs against stand-ins that record what it would start."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from lphi_edge.ros import params

SRC = Path(__file__).resolve().parents[1] / "ros2_ws" / "src"
PKG = SRC / "lphi_edge"
IFACE = SRC / "lphi_edge_interfaces"


def test_package_manifest_and_entry_points():
    root = ET.parse(PKG / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "lphi_edge"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "std_msgs", "sensor_msgs", "diagnostic_msgs", "launch_ros", "lphi_edge_interfaces"} <= deps
    assert {"lifecycle_msgs", "action_msgs"} <= deps
    assert (PKG / "resource" / "lphi_edge").is_file()
    assert "script_dir=$base/lib/lphi_edge" in (PKG / "setup.cfg").read_text()
    setup = (PKG / "setup.py").read_text()
    for exe, module in (("vqa_node", "vqa_node"), ("camera_node", "camera_node")):
        assert f'"{exe} = lphi_edge_ros.{module}:main"' in setup
        shim = (PKG / "lphi_edge_ros" / f"{module}.py").read_text()
        assert f"from lphi_edge.ros.{module} import main" in shim
    assert 'glob("launch/*.launch.py")' in setup and 'glob("config/*.yaml")' in setup


def _fields(path: Path) -> list[list[tuple[str, str]]]:
    """The (type, name) fields of each `---`-separated section of a .msg / .action file."""
    sections: list[list[tuple[str, str]]] = [[]]
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line == "---":
            sections.append([])
        elif line:
            kind, name = line.split()[:2]
            sections[-1].append((kind, name))
    return sections


def test_interface_package_defines_the_contracted_action_and_message():
    root = ET.parse(IFACE / "package.xml").getroot()
    assert root.findtext("name") == "lphi_edge_interfaces" and root.find("export/build_type").text == "ament_cmake"
    assert root.findtext("member_of_group") == "rosidl_interface_packages"
    assert {"ament_cmake", "rosidl_default_generators"} <= {e.text for e in root.findall("buildtool_depend")}
    cmake = (IFACE / "CMakeLists.txt").read_text()
    assert re.search(r'rosidl_generate_interfaces\(\$\{PROJECT_NAME\}\s+"action/Ask.action"\s+"msg/Answer.msg"', cmake)
    goal, result, feedback = _fields(IFACE / "action" / "Ask.action")
    assert goal == [
        ("string", "prompt"),
        ("sensor_msgs/Image", "image"),
        ("string", "camera"),
        ("uint32", "max_new_tokens"),
        ("float32", "temperature"),
    ]
    assert result == [
        ("string", "answer"),
        ("string", "finish_reason"),
        ("std_msgs/Header", "frame_header"),
        ("float32", "frame_age_ms"),
        ("float32", "ttft_ms"),
        ("float32", "total_ms"),
        ("uint32", "tokens"),
    ]
    assert feedback == [("string", "text"), ("uint32", "tokens")]
    (answer,) = _fields(IFACE / "msg" / "Answer.msg")
    names = [name for _, name in answer]
    assert {"prompt", "answer", "camera", "frame_header", "ttft_ms", "total_ms", "finish_reason"} <= set(names)
    finish_reasons = (IFACE / "action" / "Ask.action").read_text()
    assert "eos | stop | length | context | canceled | no_frame" in finish_reasons


def test_params_file_sets_exactly_the_declared_parameters_with_valid_values():
    values = yaml.safe_load((PKG / "config" / "vqa.yaml").read_text())["vqa_node"]["ros__parameters"]
    assert set(values) == set(params.PARAMETERS)
    for name, value in values.items():
        default = params.PARAMETERS[name][0]
        assert type(value) is type(default), name  # ROS parameter types are fixed at declaration
        assert value == default, name  # the file documents the defaults
        assert params.check_parameter(name, value) is None, name


@pytest.mark.parametrize(
    "name, value, reason",
    [
        ("cameras", ["wrist", "wrist"], "names a camera twice"),
        ("cameras", ["wrist", "2nd"], "invalid names ['2nd']"),
        ("provider", "rocm", "must be '' (the device's own) or one of ['cpu', 'cuda', 'tensorrt']"),
        ("max_frame_pixels", 0, "must be an integer in 1..268435456"),
        ("max_prompt_chars", 0, "must be an integer in 1..10000000"),
        ("autostart", "yes", "must be true or false"),
        ("frame_reuse_tolerance", -0.5, "must be -1 (the library's default tolerance), 0 (exact frames only) or"),
        ("frame_reuse_tolerance", float("inf"), "must be -1"),
        ("visual_tokens", -1, "must be 0 (all the image tokens) or an integer K ≥ 1"),
    ],
)
def test_new_parameters_are_refused_with_the_reason(name, value, reason):
    assert reason in params.check_parameter(name, value)
    assert params.check_parameter("cameras", ["wrist", "arm/left_cam"]) is None


def test_frame_reuse_and_visual_tokens_parameters_map_to_the_assistant_options():
    assert params.assistant_options(-1.0, 0) == {"frame_reuse": True, "visual_tokens": None}  # the defaults
    assert params.assistant_options(0.0, 144) == {"frame_reuse": False, "visual_tokens": 144}
    assert params.assistant_options(4.5, 0) == {"frame_reuse": 4.5, "visual_tokens": None}


def test_provider_needs_the_onnxruntime_backend():
    with pytest.raises(Exception, match="provider='cuda' applies to backend onnxruntime, not 'torch'"):
        params.load_assistant(("shapes-demo", "torch", "cpu", 0, "cuda", "", False, -1.0, 0))


def test_dtype_and_torch_compile_parameters():
    assert "must be '' (fp32) or one of" in params.check_parameter("dtype", "int4")
    assert params.check_parameter("dtype", "int8") is None
    assert "must be true or false" in params.check_parameter("torch_compile", 1)
    with pytest.raises(Exception, match=r"dtype='int8' applies to backend torch, not 'onnxruntime' \(exports"):
        params.load_assistant(("shapes-demo", "onnxruntime", "cpu", 0, "", "int8", False, -1.0, 0))
    a = params.load_assistant(("shapes-demo", "torch", "cpu", 0, "", "int8", False, -1.0, 0))
    assert (a.backend.name, a.backend.precision) == ("torch", "int8")


class _Recorder:
    """A stand-in for a launch / launch_ros class: records its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _launch(monkeypatch, **arguments) -> list[_Recorder]:
    """Run vqa.launch.py against stand-ins of launch / launch_ros; the nodes it would start."""
    for name, attrs in {
        "launch": ("LaunchDescription",),
        "launch.actions": ("DeclareLaunchArgument", "OpaqueFunction"),
        "launch_ros": (),
        "launch_ros.actions": ("LifecycleNode", "Node"),
    }.items():
        module = types.ModuleType(name)
        for attr in attrs:
            setattr(module, attr, type(attr, (_Recorder,), {}))
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("vqa_launch", PKG / "launch" / "vqa.launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    monkeypatch.setattr(launch, "get_package_share_directory", lambda pkg: str(SRC / pkg))
    description = launch.generate_launch_description()
    (entities,) = description.args
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    (opaque,) = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    context = types.SimpleNamespace(launch_configurations={**declared, **arguments})
    return opaque.kwargs["function"](context)


def test_launch_file_starts_a_lifecycle_vqa_node_with_large_data_transport(monkeypatch):
    monkeypatch.delenv("FASTDDS_BUILTIN_TRANSPORTS", raising=False)
    (vqa,) = _launch(monkeypatch)
    assert type(vqa).__name__ == "LifecycleNode" and vqa.kwargs["namespace"] == ""  # launch_ros requires one
    k = vqa.kwargs
    assert (k["package"], k["executable"], k["name"]) == ("lphi_edge", "vqa_node", "vqa_node")
    assert k["additional_env"] == {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}
    assert k["parameters"] == [str(SRC / "lphi_edge" / "config" / "vqa.yaml")] and Path(k["parameters"][0]).is_file()
    assert ("image", "image") in k["remappings"] and ("image/compressed", "image/compressed") in k["remappings"]
    # arguments override the params file; the camera shares the transport
    monkeypatch.setenv("FASTDDS_BUILTIN_TRANSPORTS", "SHM")
    vqa, cam = _launch(
        monkeypatch, model="/models/m", device="cuda", autostart="false", camera="true", image_topic="/cam/raw"
    )
    assert vqa.kwargs["parameters"][1] == {"model": "/models/m", "device": "cuda", "autostart": False}
    assert ("image/compressed", "/cam/raw/compressed") in vqa.kwargs["remappings"]
    assert vqa.kwargs["additional_env"] == cam.kwargs["additional_env"] == {"FASTDDS_BUILTIN_TRANSPORTS": "SHM"}
    assert type(cam).__name__ == "Node" and cam.kwargs["executable"] == "camera_node"
    (vqa,) = _launch(monkeypatch, dds_transports="UDPv4")
    assert vqa.kwargs["additional_env"] == {"FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}


def test_launch_file_imports_only_what_a_ros2_install_has():
    tree = ast.parse((PKG / "launch" / "vqa.launch.py").read_text())
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert imports == {
        ("ament_index_python.packages", "get_package_share_directory"),
        ("launch", "LaunchDescription"),
        ("launch.actions", "DeclareLaunchArgument"),
        ("launch.actions", "OpaqueFunction"),
        ("launch_ros.actions", "LifecycleNode"),
        ("launch_ros.actions", "Node"),
    }


def test_workspace_build_script_is_what_make_test_runs():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert re.search(r"^test: lint .*ros2_ws/install/setup\.bash", makefile, re.M)
    assert "ros2_ws/build.sh" in makefile and os.access(SRC.parent / "build.sh", os.X_OK)


def test_the_core_library_and_the_node_engine_never_import_rclpy():
    import subprocess

    code = (
        "import sys, lphi_edge, lphi_edge.assistant, lphi_edge.ros.frames, lphi_edge.ros.answerer, "
        "lphi_edge.ros.params\n"
        "assert 'rclpy' not in sys.modules, 'rclpy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
