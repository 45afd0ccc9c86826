"""Small helpers for talking to a Hugging Face Hub endpoint, shared by the leaderboard and target publishing."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from bench import paths

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # owner/name


def git_blob_oid(data: bytes) -> str:
    """The git object id of a file's content: what the Hub reports as ``oid`` for a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def same_content(remote: Any, data: bytes) -> bool:
    """Whether a Hub ``RepoFile`` holds exactly ``data`` (LFS files by sha256, regular files by git oid)."""
    lfs = getattr(remote, "lfs", None)
    if lfs is not None:
        return str(getattr(lfs, "sha256", "")) == hashlib.sha256(data).hexdigest()
    return str(getattr(remote, "blob_id", "")) == git_blob_oid(data)


def hub_endpoint() -> str | None:
    """``HF_ENDPOINT`` as set now (not as huggingface_hub read it at import), without a trailing slash; None for
    huggingface_hub's default."""
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None


def snapshot_commit(folder: Path) -> str | None:
    """The commit of a Hugging Face cache snapshot folder (``.../snapshots/<commit>``), if it is one."""
    return folder.name if folder.parent.name == "snapshots" and folder.name else None


def offline_var() -> str | None:
    """The variable that forbids network use, if any: read now (``bench.paths.offline_var``), and also as
    huggingface_hub read it at its import."""
    from huggingface_hub import constants

    var = paths.offline_var()
    if var is None and getattr(constants, "HF_HUB_OFFLINE", False):
        var = "HF_HUB_OFFLINE"
    return var


def network_errors() -> tuple[type[BaseException], ...]:
    """Transport-level exception types of whichever HTTP client this huggingface_hub uses."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
    ):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def http_status(e: BaseException) -> int | None:
    """The HTTP status code of an exception raised by the Hub client, if it carries a response."""
    response = getattr(e, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None
