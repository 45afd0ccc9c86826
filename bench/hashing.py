"""sha256 helpers shared by surrogates, targets and data."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def verify_sha256(path: Path, expected: str, *, what: str, fix: str) -> str:
    """Return the file's sha256, or raise ``HashMismatch`` naming the file, both hashes and the fix."""
    actual = sha256_file(path)
    if actual != expected:
        raise HashMismatch(f"{what}: {path} has sha256 {actual}, expected {expected}. {fix}")
    return actual


class HashMismatch(ValueError):
    """A file's content is not the content the protocol or the config pins."""
