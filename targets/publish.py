"""Publish a trained target folder (``targets/train.py``) into the zoo's Hugging Face Hub model repo.

The repo holds one folder per target, ``<name>/model.safetensors``, ``<name>/config.json`` and ``<name>/README.md``,
which is where the zoo's ``HubWeights`` entries point. Publishing follows the rules of the leaderboard's
(``leaderboard/hub.py``): one commit per target, made against the branch head it was checked at
(``parent_commit``), so a concurrent commit makes the Hub refuse ours instead of mixing files; the head is then
re-read and re-checked, a bounded number of times. A file already in the repo with other content is never
replaced without ``overwrite=True``; a target whose three files are all there byte for byte is not committed again.
The returned commit sha is the ``revision`` to pin in the zoo entry.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.hashing import sha256_file
from bench.hubclient import REPO_ID, http_status, network_errors, offline_var, same_content
from surrogates.submission import CONFIG_NAME, WEIGHTS_NAME, SubmissionError, read_config
from targets.zoo import TargetError

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
MAX_ATTEMPTS = 3  # commits tried when the branch keeps moving
_BACKOFF_S = 0.2  # base pause between attempts (doubled each time, with jitter)
_TIMEOUT_S = 30.0  # the first request; an unreachable endpoint fails fast and clearly
_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")


class TargetPublishError(RuntimeError):
    """The target was not published (invalid folder, no token, offline, unreachable, conflict); nothing changed."""


@dataclass(frozen=True)
class _Upload:
    name: str
    sha256: str  # of the weights file
    data: dict[str, bytes]  # path in repo -> content


def _read_folder(folder: Path, allow_overrides: bool) -> _Upload:
    """The three files of a trained target folder, after checking that they belong together and are the zoo entry
    (architecture, kwargs, mean/std and, unless ``allow_overrides``, the registered recipe)."""
    from targets.train import check_is_zoo_entry

    try:
        cfg = read_config(folder)
    except SubmissionError as e:
        raise TargetPublishError(f"cannot publish {folder}: {e}") from None
    name = cfg.metadata.get("target")
    if cfg.kind != "single" or not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TargetPublishError(f"cannot publish {folder}: its config.json names no target (metadata.target = "
                                 f"{name!r}); publish folders written by `transferbench targets train`.")  # fmt: skip
    try:
        check_is_zoo_entry(folder, cfg, allow_overrides, allow_arch_overrides=allow_overrides)
    except TargetError as e:
        raise TargetPublishError(f"cannot publish {folder}: {e}") from None
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise TargetPublishError(f"cannot publish {folder}: {', '.join(missing)} missing; retrain the target.")
    actual, recorded = sha256_file(folder / WEIGHTS_NAME), cfg.metadata.get("weights_sha256")
    if actual != recorded:
        raise TargetPublishError(f"cannot publish {folder}: {WEIGHTS_NAME} has sha256 {actual}, config.json records "
                                 f"{recorded}; the folder was changed after training. Retrain it.")  # fmt: skip
    return _Upload(name, actual, {f"{name}/{f}": (folder / f).read_bytes() for f in FILES})


def _explain(e: BaseException, repo_id: str, endpoint: str, doing: str) -> str:
    from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    network = network_errors()
    if isinstance(e, network) or isinstance(e.__cause__, network):
        return (
            f"cannot {doing}: the Hub endpoint {endpoint} is unreachable ({type(e).__name__}: {e}). Check the network."
        )
    if isinstance(e, RevisionNotFoundError):
        return f"cannot {doing}: the branch does not exist in model repo {repo_id} at {endpoint}; use 'main'."
    if isinstance(e, RepositoryNotFoundError):
        return (f"cannot {doing}: model repo {repo_id} was not found at {endpoint}, or the token cannot read it. "
                f"Create it (`hf repos create {repo_id}`) or use a token with access.")  # fmt: skip
    status = http_status(e)
    if status in (401, 403):
        return (f"cannot {doing}: {endpoint} refused the token (HTTP {status}). Use a token with write access to "
                f"{repo_id} (HF_TOKEN, `hf auth login`, or token=...).")  # fmt: skip
    if isinstance(e, HfHubHTTPError):
        return f"cannot {doing}: {endpoint} answered HTTP {status} for {repo_id} ({str(e).strip().splitlines()[0]})."
    return f"cannot {doing} ({type(e).__name__}: {e})."


def _head(api: Any, repo_id: str, branch: str) -> str:
    info = api.model_info(repo_id, revision=branch, expand=["sha"], timeout=_TIMEOUT_S)
    if not isinstance(info.sha, str) or not re.fullmatch(r"[0-9a-f]{40}", info.sha):
        raise TargetPublishError(f"the Hub returned no commit sha for {repo_id}@{branch} (got {info.sha!r}).")
    return info.sha


def _conflicts(api: Any, up: _Upload, repo_id: str, head: str) -> tuple[list[str], list[str]]:
    """(paths whose remote content differs, paths already identical) at commit ``head``."""
    remote = {getattr(x, "path", ""): x for x in api.get_paths_info(repo_id, list(up.data), revision=head)}
    differ, same = [], []
    for path, data in up.data.items():
        entry = remote.get(path)
        if entry is None:
            continue
        if not hasattr(entry, "blob_id"):
            raise TargetPublishError(f"{repo_id}@{head[:12]} has a folder at {path}; move it away first.")
        (same if same_content(entry, data) else differ).append(path)
    return differ, same


def _commit(api: Any, up: _Upload, repo_id: str, branch: str, head: str, message: str) -> str:
    from huggingface_hub import CommitOperationAdd

    ops = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=data) for path, data in up.data.items()]
    info = api.create_commit(repo_id, operations=ops, commit_message=message, revision=branch, parent_commit=head,
                             commit_description=f"weights sha256 {up.sha256}")  # fmt: skip
    return str(info.oid)


def _check_can_publish(repo_id: str, token: str | None) -> str:
    from huggingface_hub import get_token

    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id):
        raise TargetPublishError(f"invalid Hub repo id {repo_id!r}: expected 'owner/name' of a model repo.")
    if var := offline_var():
        raise TargetPublishError(f"refusing to publish to {repo_id}: {var} is set, so no network access is allowed.")
    token = token or get_token()
    if not token:
        raise TargetPublishError(f"no Hugging Face token to publish to {repo_id}: set HF_TOKEN, run `hf auth login`, "
                                 "or pass token=... (a token with write access to the repo).")  # fmt: skip
    return token


def _attempt(api: Any, up: _Upload, repo_id: str, branch: str, message: str, overwrite: bool) -> str:
    """One read-check-commit round against the current head; the commit holding the target."""
    head = _head(api, repo_id, branch)
    differ, same = _conflicts(api, up, repo_id, head)
    if len(same) == len(FILES):
        log.info("%s is already published in %s@%s (commit %s)", up.name, repo_id, branch, head)
        return head
    if differ and not overwrite:
        raise TargetPublishError(
            f"{repo_id}@{branch} already holds {', '.join(differ)} with other content (commit {head[:12]}); "
            "pass overwrite=True (--overwrite) to replace them."
        )
    sha = _commit(api, up, repo_id, branch, head, message)
    log.info("published %s to %s@%s (commit %s)", up.name, repo_id, branch, sha)
    return sha


def publish_target(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    revision_message: str | None = None,
    branch: str = "main",
    overwrite: bool = False,
    allow_overrides: bool = False,
) -> str:
    """Upload ``<name>/{model.safetensors, config.json, README.md}`` of a trained target in one commit; its sha.

    Only the zoo entry itself is published: a folder built with another architecture or mean/std is refused,
    and so is one trained with recipe or architecture-size overrides unless ``allow_overrides`` (tiny test runs).

    ``token=None`` uses huggingface_hub's lookup (HF_TOKEN or the saved login), ``endpoint=None`` its default.
    Different files already at those paths are refused unless ``overwrite``; if all three are already there
    byte for byte, nothing is committed and the head commit holding them is returned.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    up = _read_folder(Path(folder), allow_overrides)
    api = HfApi(endpoint=endpoint, token=_check_can_publish(repo_id, token))
    doing = f"publish {up.name} to {repo_id}"
    message = revision_message or f"Add target {up.name} (weights sha256 {up.sha256[:12]})"
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return _attempt(api, up, repo_id, branch, message, overwrite)
        except TargetPublishError:
            raise
        except HfHubHTTPError as e:
            moved = http_status(e) in (409, 412)
            if moved and attempt < MAX_ATTEMPTS:
                log.warning("%s@%s moved while publishing %s (attempt %d/%d); re-checking", repo_id, branch, up.name,
                            attempt, MAX_ATTEMPTS)  # fmt: skip
                time.sleep(_BACKOFF_S * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
                continue
            why = f"the branch changed under each of {MAX_ATTEMPTS} attempts (other publishers are committing)"
            text = f"cannot {doing}: {why}; nothing was written, run it again." if moved else None
            raise TargetPublishError(text or _explain(e, repo_id, endpoint or api.endpoint, doing)) from e
        except Exception as e:
            raise TargetPublishError(_explain(e, repo_id, endpoint or api.endpoint, doing)) from e
    raise AssertionError("unreachable")  # the loop returns or raises
