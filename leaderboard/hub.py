"""The shared leaderboard on the Hugging Face Hub: publish records to a dataset repo, pull them back.

The Hub repo mirrors the local store's layout, ``records/<protocol key>/<submission id>.json``, one JSON
record per submission. Two rules keep it trustworthy:

* **Nothing is overwritten by accident.** ``publish`` reads the head commit of the branch, checks that the
  record's path is free at that commit (same path = same surrogate under the same protocol), and commits with
  ``parent_commit=<head>``. If anyone else committed in between, the Hub refuses the commit (HTTP 412) and
  nothing changes; ``publish`` then re-reads the head, re-checks, and retries a bounded number of times. Two
  publishers of different records therefore both land, and neither can replace the other's file.
* **Nothing unverified is ingested.** ``pull`` downloads every ``records/**/*.json`` at one commit and checks
  each file (JSON, schema, a present and matching ``integrity.sha256``, and a path equal to the one its own
  content implies) before writing it atomically into the local store; rejected files are reported, never written.

Configuration comes from the environment (``HubConfig.from_env``): ``TRANSFERBENCH_HUB_REPO`` names the
dataset repo (unset = no Hub, the local store is the leaderboard), ``TRANSFERBENCH_HUB_ENDPOINT`` an optional
Hub-compatible endpoint (else ``HF_ENDPOINT`` / huggingface.co), and the token is huggingface_hub's usual one
(``HF_TOKEN`` or ``hf auth login``). ``HF_HUB_OFFLINE`` / ``TRANSFERBENCH_OFFLINE`` forbid both directions.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from bench.hubclient import REPO_ID, http_status, network_errors, offline_var, same_content
from leaderboard.record import Record, RecordError
from leaderboard.store import LocalStore, atomic_write_text, protocol_key

if TYPE_CHECKING:
    from bench.protocol import Protocol

log = logging.getLogger(__name__)

RECORDS_DIR = "records"
ENV_REPO = "TRANSFERBENCH_HUB_REPO"
ENV_ENDPOINT = "TRANSFERBENCH_HUB_ENDPOINT"
_SAFE_SEGMENT = re.compile(r"[\w-][\w.-]*")  # one path segment; never "", ".", ".." or hidden
MAX_ATTEMPTS = 3  # commits tried per publish when the branch keeps moving
_BACKOFF_S = 0.2  # base pause between attempts (doubled each time, with jitter)
_TIMEOUT_S = 30.0  # the first request of every operation; an unreachable endpoint fails fast and clearly


class HubError(RuntimeError):
    """The Hub leaderboard could not be used; the message names the repo or endpoint and the fix."""


class PublishError(HubError):
    """A record was not published (duplicate, invalid, offline, unreachable, not allowed); nothing changed."""


class AlreadyPublishedError(PublishError):
    """The Hub already holds this exact record (byte-identical file); there is nothing to do."""


class PullError(HubError):
    """The leaderboard could not be pulled; the local store was left as it was."""


@dataclass(frozen=True)
class HubConfig:
    """Where the shared leaderboard lives: a dataset repo, the branch to publish to, the endpoint and token.

    ``endpoint=None`` means huggingface_hub's default (``HF_ENDPOINT`` or https://huggingface.co) and
    ``token=None`` its usual lookup (``HF_TOKEN``, then the token saved by ``hf auth login``).
    """

    repo_id: str
    revision: str = "main"
    endpoint: str | None = None
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.repo_id, str) or not REPO_ID.fullmatch(self.repo_id):
            raise HubError(
                f"invalid Hub repo id {self.repo_id!r}: expected 'owner/name' of a dataset repo "
                f"(set {ENV_REPO}=owner/name)."
            )
        if not self.revision:
            raise HubError(f"empty revision for Hub repo {self.repo_id!r}: name a branch, e.g. 'main'.")
        if self.endpoint is not None:
            if not re.match(r"https?://[^/]", self.endpoint):
                raise HubError(
                    f"invalid Hub endpoint {self.endpoint!r}: expected an http(s) URL such as https://huggingface.co "
                    f"(check {ENV_ENDPOINT})."
                )
            object.__setattr__(self, "endpoint", self.endpoint.rstrip("/"))

    @classmethod
    def from_env(cls) -> HubConfig | None:
        """The configuration from ``TRANSFERBENCH_HUB_REPO`` / ``TRANSFERBENCH_HUB_ENDPOINT``; None if no repo is set.

        None means "no Hub configured": the local store is the leaderboard. The token is left to
        huggingface_hub (``HF_TOKEN`` or the saved login), so it is never copied into this object.
        """
        repo = os.environ.get(ENV_REPO, "").strip()
        if not repo:
            return None
        endpoint = os.environ.get(ENV_ENDPOINT, "").strip() or None
        return cls(repo_id=repo, endpoint=endpoint)

    @property
    def effective_endpoint(self) -> str:
        """The endpoint requests go to (``endpoint``, else huggingface_hub's default)."""
        if self.endpoint is not None:
            return self.endpoint
        from huggingface_hub import constants

        return str(constants.ENDPOINT)

    @property
    def url(self) -> str:
        return f"{self.effective_endpoint}/datasets/{self.repo_id}"


def require_config(cfg: HubConfig | None = None) -> HubConfig:
    """``cfg``, else the one from the environment; a clear error when no leaderboard repo is configured."""
    cfg = cfg if cfg is not None else HubConfig.from_env()
    if cfg is None:
        raise HubError(
            f"no Hub leaderboard configured: set {ENV_REPO}=owner/name (a dataset repo) and, for a mirror or a "
            f"private Hub, {ENV_ENDPOINT}=https://...; without it the local store is the leaderboard."
        )
    return cfg


def record_path(record: Record) -> str:
    """Where ``record`` lives in the repo: ``records/<protocol key>/<submission id>.json`` (the local layout)."""
    key, name = protocol_key(record.protocol), record.file_stem
    for part in (key, name):
        if not _SAFE_SEGMENT.fullmatch(part):
            raise RecordError(
                f"record path segment {part!r} (protocol {record.protocol.get('name')!r}, submission "
                f"{record.submission.get('name')!r}) is not a plain file name; rename the protocol or submission."
            )
    return f"{RECORDS_DIR}/{key}/{name}.json"


def _explain(e: BaseException, cfg: HubConfig, doing: str) -> str:
    """One message per failure kind, naming the repo/endpoint and what to do about it."""
    from huggingface_hub.utils import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint, repo = cfg.effective_endpoint, cfg.repo_id
    if isinstance(e, OfflineModeIsEnabled):
        return (
            f"cannot {doing}: offline mode is on (HF_HUB_OFFLINE); unset it to use the Hub leaderboard "
            f"{repo}, or keep using the local store."
        )
    cause = e.__cause__ if isinstance(e, LocalEntryNotFoundError) and e.__cause__ is not None else e
    if isinstance(cause, network_errors()):
        return (
            f"cannot {doing}: the Hub endpoint {endpoint} is unreachable ({type(cause).__name__}: {cause}). Check the "
            f"network, or set {ENV_ENDPOINT} to a reachable Hub mirror; to work offline, keep using the local store "
            "and publish later."
        )
    if isinstance(e, RevisionNotFoundError):
        return (
            f"cannot {doing}: branch {cfg.revision!r} does not exist in dataset repo {repo} at {endpoint}; "
            "create it on the Hub or use the repo's default branch 'main'."
        )
    status = http_status(e)
    if isinstance(e, RepositoryNotFoundError):  # the Hub answers the same for a missing and a private repo
        return (
            f"cannot {doing}: dataset repo {repo} was not found at {endpoint}, or it is private and the token cannot "
            f"read it. Check {ENV_REPO}, create the repo (`hf repos create {repo} --repo-type dataset`), or set "
            "HF_TOKEN to a token with access."
        )
    if status == 401:
        return (
            f"cannot {doing}: {endpoint} rejected the token (401 Unauthorized). Set HF_TOKEN to a valid token "
            f"with access to {repo} (or run `hf auth login`)."
        )
    if status == 403:
        return (
            f"cannot {doing}: {endpoint} refused access to {repo} (403 Forbidden). Use a token with write "
            f"access to the repo (HF_TOKEN or `hf auth login`), or ask its owners for it."
        )
    if isinstance(e, HfHubHTTPError):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"cannot {doing}: {endpoint} answered HTTP {status} for {repo} ({first})."
    return f"cannot {doing} ({type(e).__name__}: {e})."


def _api(cfg: HubConfig) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=cfg.endpoint, token=cfg.token)


def _head(api: Any, cfg: HubConfig, error: type[HubError]) -> str:
    """The commit the branch points at now (the ``parent_commit`` of the next commit)."""
    info = api.dataset_info(cfg.repo_id, revision=cfg.revision, expand=["sha"], timeout=_TIMEOUT_S)
    if not isinstance(info.sha, str) or not re.fullmatch(r"[0-9a-f]{40}", info.sha):
        raise error(
            f"{cfg.effective_endpoint} returned no commit sha for {cfg.repo_id}@{cfg.revision} (got "
            f"{info.sha!r}); is {cfg.effective_endpoint} a Hugging Face Hub endpoint?"
        )
    return info.sha


def _validated_bytes(record: Record) -> bytes:
    """The record's file content, after checking it reads back exactly as it will on pull: schema, integrity,
    numbers that follow from its outcome bits, protocol fields that agree with the registry."""
    where = f"record {record.submission.get('name')!r}"
    try:
        text = record.dumps()
        _check_trusted(Record.from_json(json.loads(text), where=where), where)
    except RecordError as e:
        raise PublishError(f"refusing to publish an invalid record: {e}") from e
    except (TypeError, ValueError) as e:
        raise PublishError(f"refusing to publish {where}: it does not serialize to strict JSON ({e}).") from e
    return text.encode("utf-8")


def publish(record: Record, cfg: HubConfig, *, overwrite: bool = False) -> str:
    """Add ``record`` to the Hub leaderboard in one commit and return that commit's sha.

    A record that departs from its protocol (``Record.deviations``: a --limit run, another precision) is
    refused. The record's path must be free at the branch head (same surrogate + same protocol = duplicate) unless
    ``overwrite``; a byte-identical file is always refused as already published. The commit names the head it
    was checked against (``parent_commit``), so a concurrent commit makes the Hub reject ours instead of
    overwriting anything; we then re-read the head, re-check and retry, at most ``MAX_ATTEMPTS`` times.
    """
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.utils import HfHubHTTPError

    cfg = require_config(cfg)
    if record.deviations:
        raise PublishError(
            f"refusing to publish {record.file_stem}: {'; '.join(record.deviations)}. The Hub leaderboard holds only "
            "runs of the whole protocol at its precision; evaluate again without --limit and --precision."
        )
    _check_numerics(record)
    data = _validated_bytes(record)
    try:
        path = record_path(record)
    except RecordError as e:
        raise PublishError(f"refusing to publish: {e}") from e
    key, sid = protocol_key(record.protocol), record.submission_id
    where = f"{cfg.repo_id}@{cfg.revision}"
    if var := offline_var():
        raise PublishError(
            f"refusing to publish {sid} to {where}: {var} is set, so no network access is allowed. Unset {var} to "
            "publish; the record stays in the local store meanwhile."
        )

    api = _api(cfg)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            head = _head(api, cfg, PublishError)
            existing = api.get_paths_info(cfg.repo_id, [path], revision=head, repo_type="dataset")
        except HubError:
            raise
        except Exception as e:
            raise PublishError(_explain(e, cfg, f"publish {sid} to {where}")) from e
        remote = next((x for x in existing if getattr(x, "path", None) == path), None)
        if remote is not None:
            if not hasattr(remote, "blob_id"):
                raise PublishError(f"{where} has a folder at {path}; move it away before publishing {sid}.")
            if same_content(remote, data):
                raise AlreadyPublishedError(
                    f"{sid} is already published: {path} in {where} is byte-identical (commit {head[:12]}); "
                    "nothing to do."
                )
            if not overwrite:
                raise PublishError(
                    f"{where} already holds {path}, a result for this surrogate (sha256 "
                    f"{record.submission['sha256'][:12]}) under protocol {key}, with different content (commit "
                    f"{head[:12]}); pass overwrite=True (--overwrite) to replace it."
                )
        verb = "Update" if remote is not None else "Add"
        op = CommitOperationAdd(path_in_repo=path, path_or_fileobj=data)
        try:
            info = api.create_commit(
                cfg.repo_id,
                operations=[op],
                commit_message=f"{verb} {sid} ({key})",
                commit_description=f"integrity sha256 {record.content_sha256()}",
                repo_type="dataset",
                revision=cfg.revision,
                parent_commit=head,
            )
        except HfHubHTTPError as e:
            if http_status(e) in (409, 412) and attempt < MAX_ATTEMPTS:
                pause = _BACKOFF_S * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                log.warning(
                    "%s moved while publishing %s (attempt %d/%d, HTTP %s); re-checking in %.1fs",
                    where,
                    sid,
                    attempt,
                    MAX_ATTEMPTS,
                    http_status(e),
                    pause,
                )
                time.sleep(pause)
                continue
            if http_status(e) in (409, 412):
                raise PublishError(
                    f"could not publish {sid} to {where}: the branch changed under each of {MAX_ATTEMPTS} attempts "
                    "(other publishers are committing); nothing was written, run it again."
                ) from e
            raise PublishError(_explain(e, cfg, f"publish {sid} to {where}")) from e
        except Exception as e:
            raise PublishError(_explain(e, cfg, f"publish {sid} to {where}")) from e
        # create_commit skips files whose remote copy is identical and then makes no commit at all; that means
        # someone published these very bytes after we looked: report it rather than claim a commit.
        remote_oid = getattr(op, "_remote_oid", None)
        if info.oid == head or (remote_oid is not None and remote_oid == getattr(op, "_local_oid", None)):
            raise AlreadyPublishedError(f"{sid} is already published: {path} in {where} is byte-identical.")
        log.info("published %s to %s (commit %s)", path, where, info.oid)
        return str(info.oid)
    raise AssertionError("unreachable")  # the loop returns or raises


@dataclass
class Rejection:
    """A file of the Hub leaderboard that ``pull`` refused, with the reason."""

    path: str
    reason: str


@dataclass
class PullReport:
    """What ``pull`` did: the commit it read, and which local files it wrote, left alone or refused."""

    repo_id: str
    commit: str
    new: list[Path] = field(default_factory=list)
    updated: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.rejected

    def summary(self) -> str:
        text = (
            f"pulled {self.repo_id}@{self.commit[:12]}: {len(self.new)} new, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged, {len(self.rejected)} rejected"
        )
        return "\n".join([text, *(f"  rejected {r.path}: {r.reason}" for r in self.rejected)])


def _registered(record: Record) -> Protocol | None:
    """The registered protocol the record was evaluated under (same name, version and hash), if there is one."""
    from bench.protocol import PROTOCOLS

    proto = record.protocol
    registered = PROTOCOLS.get(proto["name"]) if proto["name"] in PROTOCOLS else None
    if registered is None or (registered.version, registered.sha256) != (proto["version"], proto["sha256"]):
        return None
    return registered


def _check_numerics(record: Record) -> None:
    """Refuse a record made by code that computes its (registered, same-hash) protocol differently from this
    version, or by an install that did not reproduce its pins: on the shared board it would rank beside results
    it cannot be compared with. A record without the digest for another reason (made before records carried it,
    pins missing) is published with a warning; the tables name such rows as unverified."""
    from bench.numerics import numerics_digest

    registered = _registered(record)
    if registered is None:
        return
    have, want = record.provenance.get("numerics"), numerics_digest(registered)
    how = str(record.provenance.get("numerics_check") or "made before records carried it")
    if have is None and how.endswith("values moved"):
        raise PublishError(
            f"refusing to publish {record.file_stem}: the install that made it did not reproduce the reference "
            f"numerics of {registered.id} ({how}; bench/numerics.py, `transferbench selfcheck` shows which), so its "
            "numbers cannot be compared with the leaderboard's. Evaluate it again on an install that passes "
            "`transferbench selfcheck`."
        )
    if have is None:
        log.warning("%s carries no reference-numerics digest (%s): the leaderboard will name it as unverified",
                    record.file_stem, how)  # fmt: skip
    elif want is not None and have != want:
        raise PublishError(
            f"refusing to publish {record.file_stem}: it was made by code that computes {registered.id} differently "
            f"from this version (reference numerics {have[:12]} vs {want[:12]}, bench/numerics.py). Re-evaluate it "
            "with this version, or publish it with the version that made it "
            f"(TransferBench {record.provenance.get('package_version')}, git {record.provenance.get('git_sha')})."
        )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_trusted(record: Record, where: str) -> None:
    """What a shared leaderboard checks beyond the schema: the numbers follow from the record's outcome bits
    (``leaderboard.consistency``), and a registered protocol's ranking rule and kind are the registry's (a record
    cannot relabel a smoke run as a benchmark one or rank by another cell)."""
    from leaderboard.consistency import check_consistent

    proto, registered = record.protocol, _registered(record)
    if registered is not None:
        for k in ("kind", "status", "ranking_cell", "ranking_asr"):
            if proto.get(k) != getattr(registered, k):
                raise RecordError(f"{where}: protocol.{k} is {proto.get(k)!r}, but {registered.id} says "
                                  f"{getattr(registered, k)!r}")  # fmt: skip
    check_consistent(record, where=where)


def verify_remote_record(path_in_repo: str, data: bytes) -> Record:
    """Check a downloaded file before it may enter the local store; a ``RecordError`` says why it may not.

    It must be UTF-8 JSON without NaN/Infinity, follow the schema, carry ``integrity.sha256`` matching its content,
    sit at the path its own content implies (so a record cannot be filed under another submission's or protocol's
    name), agree with the registry on its protocol's ranking rule, and hold numbers that follow from its own
    per-image outcome bits. Anything else malformed about it (a nesting too deep, a number too large) is refused
    the same way: the file is untrusted input.
    """
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RecordError(f"{path_in_repo}: not a JSON record ({type(e).__name__}: {e})") from None
    integrity = doc.get("integrity") if isinstance(doc, dict) else None
    if not isinstance(integrity, dict) or not isinstance(integrity.get("sha256"), str):
        raise RecordError(f"{path_in_repo}: integrity.sha256 is missing, so the content cannot be verified")
    try:
        record = Record.from_json(doc, where=path_in_repo)
        expected = record_path(record)
        if path_in_repo != expected:
            raise RecordError(
                f"{path_in_repo}: its content is the record of {expected}; a record must sit at its own path"
            )
        _check_trusted(record, path_in_repo)
        if record.deviations:  # publish refuses them; a file uploaded by other means is refused here
            raise RecordError(f"{path_in_repo}: {'; '.join(record.deviations)}; the Hub leaderboard holds only runs "
                              "of the whole protocol at its precision")  # fmt: skip
    except RecordError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, KeyError, AttributeError) as e:
        raise RecordError(f"{path_in_repo}: a malformed record ({type(e).__name__}: {e})") from None
    return record


def pull(cfg: HubConfig, store: LocalStore) -> PullReport:
    """Download the Hub leaderboard at the branch head, verify every record and write the good ones into ``store``.

    Files identical to the local copy are left alone; a verified remote record replaces a different local file
    of the same submission (the Hub is the shared reference). Files that fail verification are never written.
    """
    from huggingface_hub import snapshot_download

    cfg = require_config(cfg)
    where = f"{cfg.repo_id}@{cfg.revision}"
    if var := offline_var():
        raise PullError(f"cannot pull {where}: {var} is set, so no network access is allowed; unset it to pull.")
    api = _api(cfg)
    with tempfile.TemporaryDirectory(prefix="transferbench-pull-") as tmp:
        try:
            head = _head(api, cfg, PullError)
            # Downloads go to a private folder and cache: the user's HF cache is neither read nor written, so a
            # stale or edited cached copy can never stand in for the Hub's content.
            folder = snapshot_download(
                cfg.repo_id,
                repo_type="dataset",
                revision=head,
                allow_patterns=[f"{RECORDS_DIR}/*.json", f"{RECORDS_DIR}/**/*.json"],  # stray files too
                local_dir=Path(tmp, "snapshot"),
                cache_dir=Path(tmp, "cache"),
                endpoint=cfg.endpoint,
                token=cfg.token,
                max_workers=4,
            )
        except HubError:
            raise
        except Exception as e:
            raise PullError(_explain(e, cfg, f"pull {where}")) from e
        report = PullReport(repo_id=cfg.repo_id, commit=head)
        root = Path(folder, RECORDS_DIR)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        for file in files:
            path_in_repo = PurePosixPath(RECORDS_DIR, *file.relative_to(root).parts).as_posix()
            data = file.read_bytes()
            try:
                record = verify_remote_record(path_in_repo, data)
            except RecordError as e:
                reason = str(e).removeprefix(f"{path_in_repo}: ")
                log.warning("rejected %s from %s: %s", path_in_repo, where, reason)
                report.rejected.append(Rejection(path_in_repo, reason))
                continue
            text = record.dumps()  # exactly the verified content (unknown extra keys are not carried over)
            if text.encode("utf-8") != data:
                log.info(
                    "%s: stored in canonical form (the Hub copy differs only in formatting or unknown keys)",
                    path_in_repo,
                )
            local = store.path_for(record)
            old = local.read_text(encoding="utf-8") if local.is_file() else None
            if old == text:
                report.unchanged.append(local)
                continue
            atomic_write_text(local, text)
            (report.updated if old is not None else report.new).append(local)
            log.info("%s %s", "updated" if old is not None else "wrote", local)
    log.info(report.summary())
    return report
