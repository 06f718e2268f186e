"""Which export (or checkpoint) files were already hashed on this machine, so that opening an export does not
re-hash gigabytes on every start (a full-size int4 export is ≈ 1.8 GB: seconds of sha256 on a Jetson), nor does
`lphi-eval run` to identify the model it answers with.

A file's sha256 is trusted without re-hashing only while the file is provably the one that was hashed:
same device, inode, size, modification and status-change times (st_ctime_ns changes on every write and
cannot be set back by a user program). Any change — rewritten, replaced, touched back to its old mtime —
means a full hash again, so a modified file is still refused. The record lives in the user's cache
(`$LPHI_EDGE_CACHE`, else `$XDG_CACHE_HOME/lphi-edge`, else `~/.cache/lphi-edge`), one small JSON per
export directory; when it cannot be written, everything is simply hashed each time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    if os.environ.get("LPHI_EDGE_CACHE"):
        return Path(os.environ["LPHI_EDGE_CACHE"]) / "verified"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lphi-edge" / "verified"


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class VerifiedHashes:
    """The hashes this machine has verified for one export directory, keyed by file name."""

    def __init__(self, directory: Path):
        self.directory = directory.resolve()
        key = hashlib.sha256(str(self.directory).encode()).hexdigest()[:24]
        self.record = cache_dir() / f"{key}.json"
        self._entries: dict[str, Any] = {}
        self._changed = False
        try:
            data = json.loads(self.record.read_text())
            if data.get("directory") == str(self.directory):
                self._entries = data.get("files", {})
        except (OSError, ValueError, AttributeError):
            pass

    def known(self, path: Path, sha256: str) -> bool:
        """True when `path` is the very file whose hash was `sha256` when this machine last hashed it."""
        entry = self._entries.get(path.name)
        return bool(entry) and entry.get("sha256") == sha256 and entry.get("identity") == _identity(path)

    def recorded(self, path: Path) -> str | None:
        """The sha256 this machine recorded for `path`, while it is still the very file hashed; else None."""
        entry = self._entries.get(path.name)
        return entry.get("sha256") if entry and entry.get("identity") == _identity(path) else None

    def remember(self, path: Path, sha256: str) -> None:
        self._entries[path.name] = {"sha256": sha256, "identity": _identity(path)}
        self._changed = True

    def save(self) -> None:
        if not self._changed:
            return
        try:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.record.parent, delete=False, suffix=".tmp") as f:
                json.dump({"directory": str(self.directory), "files": self._entries}, f)
            os.replace(f.name, self.record)
        except OSError as e:  # a read-only home: hash every time, nothing else changes
            logger.debug("cannot record verified hashes in %s: %s", self.record, e)
