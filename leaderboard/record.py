"""The result record: one JSON document per evaluated submission, numbers as numbers, full provenance.

Layout (schema_version 1)::

    submission   name, kind, sha256, member sha256s, metadata (recipe, paper, ...), source
    protocol     name, version, sha256, kind, status, ranking rule
    data         source, content sha256, number of images, partial flag (a --limit run)
    targets      per target: sha256, source, family, clean accuracy
    runs         one per model evaluated (one, or one per seed of a seed group), each with clean accuracy,
                 smoothness, similarity per target, per-cell fooling rate and ASRs, and the per-image
                 outcome bits they were computed from
    score        the ranking number: mean over targets of the ranking ASR in the ranking cell, mean (and
                 std over seeds) across runs
    provenance   package version and git sha, python/torch/CUDA versions, device, precision, seed, wall time,
                 and ``numerics``: the digest of its protocol's reference numerics, which the evaluation
                 reproduced on the CPU before it ran (bench/numerics.py), so that records of one protocol hash
                 made by code that computes differently are told apart; null where it could not
                 (``numerics_check`` says why: no pins for this hash, values moved, a library missing)
    integrity    sha256 of the canonical JSON of everything above: a record damaged in transit, or edited
                 by hand without recomputing it, no longer verifies. It is a checksum, not a signature:
                 anyone can recompute it after an edit. What a shared leaderboard can check beyond it is
                 that the numbers follow from the record's own per-image outcome bits
                 (``leaderboard.consistency``); authorship is the Hub's (reviewed pull requests, commits).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from bench.jsonvalues import is_finite_number

SCHEMA = "transferbench.record"
SCHEMA_VERSION = 1
REQUIRED = ("submission", "protocol", "data", "targets", "runs", "score", "provenance")


class RecordError(ValueError):
    """A record does not follow the schema; the message names the field."""


@dataclass
class Record:
    submission: dict[str, Any]
    protocol: dict[str, Any]
    data: dict[str, Any]
    targets: dict[str, dict[str, Any]]
    runs: list[dict[str, Any]]
    score: dict[str, Any]
    provenance: dict[str, Any]
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def submission_id(self) -> str:
        """Stable file name: the submission's name and its content hash."""
        return record_file_stem(str(self.submission["name"]), str(self.submission["sha256"]))

    @property
    def off_protocol_precision(self) -> bool:
        """True when the run used another numeric precision than its protocol pins (``--precision``)."""
        return self.provenance.get("precision_matches_protocol") is False

    @property
    def deviations(self) -> list[str]:
        """How this run departs from its protocol, in words (empty for a canonical run).

        A partial run (``--limit``) and a run at another precision than the protocol's are kept and shown, but
        never rank beside canonical runs, never replace them in a store, and are not published.
        """
        out = []
        if self.data.get("partial"):
            out.append(f"partial: {self.data.get('n_images')} images (--limit run)")
        if self.off_protocol_precision:
            out.append(f"precision {self.provenance.get('precision')} (the protocol pins "
                       f"{self.provenance.get('protocol_precision')})")  # fmt: skip
        return out

    @property
    def file_stem(self) -> str:
        """The record's file name without ``.json``: ``submission_id``, plus a suffix per deviation, so a
        partial or other-precision run is stored beside the canonical record of the same surrogate, not over it."""
        return record_file_stem(
            str(self.submission["name"]),
            str(self.submission["sha256"]),
            partial_images=self.data.get("n_images") if self.data.get("partial") else None,
            other_precision=str(self.provenance.get("precision")) if self.off_protocol_precision else None,
        )

    def to_json(self) -> dict[str, Any]:
        d = self._body()
        d["integrity"] = {"sha256": self.content_sha256()}
        return d

    def _body(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": self.schema, "schema_version": self.schema_version}
        d.update({k: getattr(self, k) for k in REQUIRED})
        if self.extra:
            d["extra"] = self.extra
        return d

    def content_sha256(self) -> str:
        """Hash of the canonical JSON of the record's content (what ``integrity.sha256`` holds)."""
        return canonical_sha256(self._body())

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=False, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, d: Any, *, where: str = "record") -> Record:
        validate(d, where=where)
        rec = cls(**{k: d[k] for k in REQUIRED}, schema=d["schema"], schema_version=d["schema_version"],
                  extra=d.get("extra", {}))  # fmt: skip
        stored = d.get("integrity", {}).get("sha256") if isinstance(d.get("integrity"), dict) else None
        if stored is not None and stored != rec.content_sha256():
            raise RecordError(f"{where}: integrity check failed (content sha256 {rec.content_sha256()[:12]}, "
                              f"recorded {str(stored)[:12]}); the record was modified or damaged.")  # fmt: skip
        return rec


MAX_NAME_CHARS = 100  # of the name part of a file stem: file systems allow 255 bytes per name


def record_file_stem(
    name: str, sha256: str, *, partial_images: int | None = None, other_precision: str | None = None
) -> str:
    """The file name (without ``.json``) of a surrogate's record: ``<name>-<sha12>``, plus ``.limit<N>`` for a
    partial run of N images and ``.<precision>`` for a run at another precision than the protocol's. Known before
    the run, so a caller can refuse a duplicate before spending the evaluation on it."""
    slug = _file_safe(name).strip("-")[:MAX_NAME_CHARS].strip("-")
    stem = f"{slug or 'surrogate'}-{sha256[:12]}"
    if partial_images is not None:
        stem += f".limit{partial_images}"
    if other_precision is not None:
        stem += f".{other_precision}"
    return _file_safe(stem)


def _file_safe(text: str) -> str:
    """``text`` with every character but ASCII letters, digits, ``-``, ``_`` and ``.`` replaced by ``-``.

    ASCII only: look-alike letters of other scripts (a fullwidth M) would give names that differ invisibly."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "-" for c in text)


def canonical_sha256(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _require(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise RecordError(f"{where}: {msg}")


def _is_fraction(v: Any) -> bool:
    return is_finite_number(v) and 0 <= v <= 1


def _is_sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _optional_number(d: dict[str, Any], key: str) -> bool:
    return d.get(key) is None or is_finite_number(d.get(key))


def validate(d: Any, *, where: str = "record") -> None:
    """Check the structure and the types that tables and comparisons rely on."""
    _require(isinstance(d, dict), where, "a record is a JSON object")
    _require(d.get("schema") == SCHEMA, where, f"'schema' must be {SCHEMA!r}")
    _require(d.get("schema_version") == SCHEMA_VERSION, where, f"schema_version must be {SCHEMA_VERSION}")
    for k in REQUIRED:
        _require(k in d, where, f"missing field {k!r}")
    for k in ("submission", "protocol", "data", "targets", "score", "provenance"):
        _require(isinstance(d[k], dict), where, f"{k} must be an object")
    sub, proto = d["submission"], d["protocol"]
    for k in ("name", "kind", "sha256"):
        _require(isinstance(sub.get(k), str), where, f"submission.{k} must be a string")
    _require(_is_sha256(sub["sha256"]), where, "submission.sha256 must be 64 lowercase hex digits")
    _require(isinstance(sub.get("metadata", {}), dict), where, "submission.metadata must be an object")
    for k in ("name", "sha256"):
        _require(isinstance(proto.get(k), str), where, f"protocol.{k} must be a string")
    _require(_is_sha256(proto["sha256"]), where, "protocol.sha256 must be 64 lowercase hex digits")
    version = proto.get("version")
    _require(isinstance(version, int) and not isinstance(version, bool), where, "protocol.version must be an integer")
    _require(_is_sha256(d["data"].get("sha256")), where, "data.sha256 must be 64 lowercase hex digits")
    _require(all(isinstance(t, dict) for t in d["targets"].values()), where, "every targets entry must be an object")
    _require(isinstance(d["runs"], list) and d["runs"], where, "runs must be a non-empty list")
    for i, run in enumerate(d["runs"]):
        _require(isinstance(run, dict), where, f"runs[{i}] must be an object")
        _require(_is_fraction(run.get("clean_accuracy")), where, f"runs[{i}].clean_accuracy must be in [0, 1]")
        _require(isinstance(run.get("cells"), dict), where, f"runs[{i}].cells must be an object")
        for k in ("smoothness", "similarity", "weight_sharpness"):
            _require(isinstance(run.get(k, {}), dict), where, f"runs[{i}].{k} must be an object")
    score = d["score"]
    _require(_is_fraction(score.get("mean")), where, "score.mean must be a number in [0, 1]")
    _require(_optional_number(score, "std"), where, "score.std must be a number or null")
    per_run = score.get("per_run", [])
    _require(isinstance(per_run, list) and all(_is_fraction(v) for v in per_run), where,
             "score.per_run must list numbers in [0, 1]")  # fmt: skip
    for k in ("package_version", "torch", "device", "precision", "seed"):
        _require(k in d["provenance"], where, f"provenance.{k} is missing")
    _require(isinstance(d["provenance"]["precision"], str), where, "provenance.precision must be a string")
    numerics = d["provenance"].get("numerics")
    _require(
        numerics is None or _is_sha256(numerics), where, "provenance.numerics must be null or 64 lowercase hex digits"
    )
