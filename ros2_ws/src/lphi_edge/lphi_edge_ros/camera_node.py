"""`ros2 run lphi_edge camera_node`: the lphi-edge library's camera source."""

import sys

from lphi_edge.ros.camera_node import main

if __name__ == "__main__":
    sys.exit(main())
