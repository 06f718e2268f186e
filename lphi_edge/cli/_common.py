"""What every lphi-* command shares: logging setup and one-line errors instead of tracebacks."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable

from lphi_edge.errors import LphiError

EXIT_USAGE = 2
EXIT_FAILURE = 1


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:  # third-party chatter (e.g. transformers' torchvision notice) stays out of the answer
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def check_engine_args(args) -> None:
    """The cheap checks of --device / --threads, before any weights load (ConfigError: one line, exit 2)."""
    from lphi_edge.runtime.device import check_threads, parse_device

    if args.device is not None:
        parse_device(args.device)
    check_threads(args.threads, "--threads")


def run(prog: str, main: Callable[[], int]) -> int:
    """Run `main`; user errors become `prog: error: message` on stderr with a non-zero exit.

    Set LPHI_DEBUG=1 to see the traceback of unexpected errors.
    """
    try:
        return main()
    except LphiError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence for a CLI
        if os.environ.get("LPHI_DEBUG"):
            raise
        print(f"{prog}: internal error: {type(e).__name__}: {e} (set LPHI_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILURE
