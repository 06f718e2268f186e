"""`ros2 run lphi_edge vqa_node`: the lphi-edge library's VQA node."""

import sys

from lphi_edge.ros.vqa_node import main

if __name__ == "__main__":
    sys.exit(main())
