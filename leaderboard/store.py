"""The local leaderboard store: ``<root>/<protocol>-v<version>/<submission id>.json``, one file each.

Writes are atomic (temporary file in the same folder, fsync, rename), so a crash, a full disk or a
failed evaluation never leaves a half-written record behind.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import paths
from leaderboard.record import Record, RecordError

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The store could not be read or written; the message names the file and the fix."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        hint = " The disk is full: free space and run again." if e.errno == errno.ENOSPC else ""
        raise StoreError(f"could not write {path} ({e.strerror or e}).{hint} Nothing was written.") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalStore:
    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else paths.leaderboard_dir()

    def path_for(self, record: Record) -> Path:
        proto = record.protocol
        return self.root / f"{proto['name']}-v{proto['version']}" / f"{record.submission_id}.json"

    def add(self, record: Record, *, overwrite: bool = False) -> Path:
        """Store a record. The same surrogate under the same protocol is a duplicate unless ``overwrite``."""
        path = self.path_for(record)
        if path.exists() and not overwrite:
            old = self.read(path)
            if old.protocol["sha256"] == record.protocol["sha256"]:
                raise StoreError(
                    f"{path} already holds a result for this surrogate (sha256 {record.submission['sha256'][:12]}) "
                    "under the same protocol hash; pass --overwrite to replace it."
                )
        atomic_write_text(path, record.dumps())
        log.info("wrote %s", path)
        return path

    @staticmethod
    def read(path: Path) -> Record:
        try:
            return Record.from_json(json.loads(path.read_text()), where=str(path))
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}: not valid JSON ({e}); delete or restore the file.") from None

    def records(self, protocol: str | None = None) -> Iterator[Record]:
        """All valid records (optionally of one protocol name); invalid files are reported, not skipped silently."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob("*/*.json")):
            rec = self.read(path)
            if protocol is None or rec.protocol["name"] == protocol:
                yield rec
