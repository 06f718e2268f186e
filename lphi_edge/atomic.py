"""Publishing directories atomically: written beside the target, renamed into place when complete."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_directory(out: Path, tag: str = "partial") -> Iterator[Path]:
    """Yield a hidden `.<out>.<tag>-*` directory next to `out`; on success it replaces `out`, on any
    error (or interrupt) it is removed. A kill leaves only the hidden directory, which the next call
    for the same `out` clears."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.{tag}-*"):
        logger.warning("removing %s left by an interrupted run", stale)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{tag}-", dir=out.parent))
    try:
        yield tmp
        make_readable(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_readable(directory: Path) -> None:
    """mkdtemp creates 0700; give the tree the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    for root, _dirs, files in os.walk(directory):
        os.chmod(root, 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~umask)
