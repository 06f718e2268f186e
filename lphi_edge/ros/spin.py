"""Start-up and shutdown shared by the ROS 2 nodes' `main`: one-line errors (exit 2), clean SIGINT (exit 0)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import rclpy
from rclpy.exceptions import InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from lphi_edge.errors import LphiError


def run_node(make: Callable[[], Node], name: str, args: list[str] | None = None) -> int:
    """rclpy.init → make() → spin until SIGINT / shutdown (or the node raises SystemExit when done);
    the node's `close()` (if any) runs before it is destroyed."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rclpy.init(args=sys.argv if args is None else args)
    node = None
    try:
        node = make()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException, SystemExit):
        pass
    except (LphiError, InvalidParameterValueException) as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            getattr(node, "close", lambda: None)()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
