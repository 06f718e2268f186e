"""ament_python package `lphi_edge`: thin entry points over the lphi-edge library's ROS nodes."""

from glob import glob

from setuptools import setup

package_name = "lphi_edge"

setup(
    name=package_name,
    version="0.1.0",
    packages=["lphi_edge_ros"],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="lphi-edge developers",
    maintainer_email="dev@lphi-edge.invalid",
    description="LLaVA-Phi VQA node for live camera frames",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "vqa_node = lphi_edge_ros.vqa_node:main",
            "camera_node = lphi_edge_ros.camera_node:main",
        ],
    },
)
