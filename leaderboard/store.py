"""The local leaderboard store: ``<root>/<protocol>-v<version>/<submission id>.json``, one file each.

Records made under a protocol whose hash differs from the registered one (a ``--targets`` subset, an
older build) go to ``<protocol>-v<version>-<hash8>/`` so they can never overwrite or rank beside the
canonical results. Writes are atomic (temporary file in the same folder, fsync, rename), so a crash, a
full disk or a failed evaluation never leaves a half-written record behind.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import paths
from bench.protocol import PROTOCOLS
from leaderboard.record import Record, RecordError

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The store could not be read or written; the message names the file and the fix."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a shared leaderboard must stay readable
        os.replace(tmp, path)
    except OSError as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        hint = " The disk is full: free space and run again." if e.errno == errno.ENOSPC else ""
        raise StoreError(f"could not write {path} ({e.strerror or e}).{hint} Nothing was written.") from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def protocol_key(proto: dict) -> str:
    """``name-vN`` for the registered protocol; ``name-vN-<hash8>`` for any other hash."""
    base = f"{proto['name']}-v{proto['version']}"
    registered = PROTOCOLS.get(proto["name"]) if proto["name"] in PROTOCOLS else None
    if registered is not None and registered.version == proto["version"] and registered.sha256 == proto["sha256"]:
        return base
    return f"{base}-{proto['sha256'][:8]}"


class LocalStore:
    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else paths.leaderboard_dir()

    def path_for(self, record: Record) -> Path:
        return self.root / protocol_key(record.protocol) / f"{record.file_stem}.json"

    def check_free(self, protocol: dict, stem: str, sha256: str, *, overwrite: bool = False) -> Path:
        """The path a record of ``stem`` under ``protocol`` (name, version, sha256) goes to; StoreError if a result
        is already there and not ``overwrite``. Called before an evaluation and again when its record is added."""
        path = self.root / protocol_key(protocol) / f"{stem}.json"
        if path.exists() and not overwrite:
            raise StoreError(
                f"{path} already holds a result for this surrogate (sha256 {sha256[:12]}) under this protocol; "
                "pass --overwrite to replace it."
            )
        return path

    def add(self, record: Record, *, overwrite: bool = False) -> Path:
        """Store a record. The same surrogate under the same protocol is a duplicate unless ``overwrite``."""
        path = self.check_free(record.protocol, record.file_stem, record.submission["sha256"], overwrite=overwrite)
        atomic_write_text(path, record.dumps())
        log.info("wrote %s", path)
        return path

    @staticmethod
    def read(path: Path) -> Record:
        try:
            return Record.from_json(json.loads(path.read_bytes()), where=str(path))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RecordError(f"{path}: not a valid JSON record ({e}); delete or restore the file.") from None

    def records(self, protocol: str | None = None) -> Iterator[Record]:
        """All records, optionally of one protocol (``cifar10`` or ``cifar10-v1``); invalid files raise."""
        if not self.root.is_dir():
            return
        name, version = protocol, None
        match = re.fullmatch(r"(.+)-v(\d+)", protocol or "")
        if match:
            name, version = match.group(1), int(match.group(2))
        for path in sorted(self.root.glob("*/*.json")):
            rec = self.read(path)
            if name is not None and rec.protocol["name"] != name:
                continue
            if version is not None and rec.protocol["version"] != version:
                continue
            yield rec
