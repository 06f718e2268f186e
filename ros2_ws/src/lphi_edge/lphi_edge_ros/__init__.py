"""Entry points of the ROS 2 package `lphi_edge`; the nodes live in the lphi-edge library (lphi_edge.ros)."""
