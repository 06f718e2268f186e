#!/usr/bin/env bash
# Build ros2_ws (lphi_edge_interfaces + lphi_edge) with colcon from the ROS 2 PyPI wheels in a venv, into
# ros2_ws/install, so that `source ros2_ws/install/setup.bash` works afterwards. `make test` runs it.
#
#   ros2_ws/build.sh [VENV]          (default: .venv)
#
# On a robot with a ROS 2 install, build as usual instead: cd ros2_ws && colcon build && source install/setup.bash
# Without the ROS 2 wheels (they exist for CPython 3.11 on x86_64 Linux only) this says so and builds nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(cd "${1:-$ROOT/.venv}" && pwd)"
PY="$VENV/bin/python"

if ! "$PY" -c "import rclpy, rosidl_generator_py" 2>/dev/null || [ ! -x "$VENV/bin/colcon" ]; then
    echo "ros2_ws/build.sh: no ROS 2 wheels or colcon in $VENV (pip install 'lphi-edge[ros]' on CPython 3.11," \
         "x86_64 Linux): ros2_ws not built, the ROS tests will skip" >&2
    exit 0
fi

# The msg wheels were built under manylinux: their exported CMake targets name that image's Python and numpy
# include directories. Point them at this venv's (idempotent; needed again after a msg wheel is reinstalled).
PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NPINC="$("$PY" -c 'import numpy; print(numpy.get_include())')"
sed -i -e "s|/opt/python/cp311-cp311/include/python3.11|$PYINC|g" \
       -e "s|/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include|$NPINC|g" \
       "$VENV"/share/*/cmake/*__rosidl_generator_pyExport.cmake

# AMENT_PREFIX_PATH: the type supports are found through the ament index (the venv is the underlay);
# VIRTUAL_ENV + PATH: CMake's FindPython and the installed scripts' shebangs use the venv's Python.
cd "$ROOT/ros2_ws"
VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" \
    "$VENV/bin/colcon" --log-base log build --base-paths src --build-base build --install-base install \
    --event-handlers status- \
    --cmake-args -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release
touch install/setup.bash  # newer than every source: make's marker
