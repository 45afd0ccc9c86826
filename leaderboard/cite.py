"""BibTeX for TransferBench, for one leaderboard entry, and for the seed paper whose definitions the metrics follow.

A TransferBench number is only meaningful with its protocol key and hash, the data hash and the weights hash
of every target, so the entry for a submission carries them, together with the score, the surrogate's sha256
and what produced the number as the record states it (package version and git sha, torch, CUDA, device). All
user-supplied text (names, recipes, paper titles) is escaped so that it cannot break the BibTeX file or the LaTeX
document.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import bench
from leaderboard.page import model_card_url
from leaderboard.record import Record
from leaderboard.store import protocol_key
from leaderboard.table import target_weights

# Placeholder: the public Hub leaderboard is not published yet (open issue #4); replace once it exists.
BENCHMARK_URL = "https://huggingface.co/datasets/transferbench/leaderboard"
BENCHMARK_KEY = "transferbench2026"

BENCHMARK_BIBTEX = f"""@misc{{{BENCHMARK_KEY},
  title        = {{{{TransferBench}}: A Versioned Benchmark Ranking Surrogate Models by the Transferability of Their
                  Adversarial Examples}},
  author       = {{{{TransferBench contributors}}}},
  year         = {{2026}},
  version      = {{{bench.__version__}}},
  url          = {{{BENCHMARK_URL}}},
  note         = {{Version {bench.__version__}. Cite results together with the protocol id and sha256}}
}}
"""

_SEED_BIBTEX = """@inproceedings{zhang2024little,
  title         = {Why Does Little Robustness Help? {A} Further Step Towards Understanding Adversarial
                   Transferability},
  author        = {Zhang, Yechao and Hu, Shengshan and Zhang, Leo Yu and Shi, Junyu and Li, Minghui and
                   Liu, Xiaogeng and Wan, Wei and Jin, Hai},
  booktitle     = {2024 IEEE Symposium on Security and Privacy (SP)},
  year          = {2024},
  eprint        = {2307.07873},
  archiveprefix = {arXiv},
  note          = {Definitions of model smoothness (Def. 1), gradient similarity (Def. 2) and transfer attack
                   success rate (Def. 3) followed by TransferBench}
}
"""

_BIB_SPECIAL = {
    "\\": r"\textbackslash{}", "{": r"\textbraceleft{}", "}": r"\textbraceright{}", "&": r"\&", "%": r"\%",
    "$": r"\$", "#": r"\#", "_": r"\_", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}",
}  # fmt: skip
_SAFE_URL = re.compile(r"https?://[A-Za-z0-9._~/:@+=-]+")


def bib_escape(text: Any) -> str:
    """Text safe in a braced BibTeX field and in LaTeX: braces stay balanced, specials escaped, one line."""
    return "".join(_BIB_SPECIAL.get(c, c) for c in " ".join(str(text).split()))


def seed_bibtex() -> str:
    """Zhang et al., IEEE S&P 2024 (seed 002), whose Definitions 1-3 the smoothness, similarity and ASR follow."""
    return _SEED_BIBTEX


def entry_key(record: Record) -> str:
    """A BibTeX key for a submission: ``tb-<name slug>-<sha8>`` (ASCII letters, digits and dashes)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(record.submission["name"])).strip("-").lower()[:40]
    return f"tb-{slug or 'surrogate'}-{record.submission['sha256'][:8]}"


def _authors(meta: dict[str, Any]) -> str | None:
    authors = meta.get("authors") or meta.get("author")
    if not authors:
        return None
    if isinstance(authors, (list, tuple)):
        return " and ".join(bib_escape(a) for a in authors)
    return bib_escape(authors)


def _produced_by(p: dict[str, Any]) -> str:
    """``Computed with TransferBench <version> (git <sha>, reference numerics <digest>), torch <v>, CUDA <v>, on
    <device>`` from a record (``unverified`` numerics where it carries no digest)."""
    numerics = str(p.get("numerics") or "unverified")[:16]
    return (f"Computed with TransferBench {bib_escape(p.get('package_version', ''))} "
            f"(git {bib_escape(p.get('git_sha') or 'n/a')}, reference numerics {bib_escape(numerics)}), "
            f"torch {bib_escape(p.get('torch') or 'n/a')}, CUDA {bib_escape(p.get('cuda') or 'none')}, on "
            f"{bib_escape(p.get('device') or 'n/a')}")  # fmt: skip


def entry_bibtex(record: Record) -> str:
    """@misc for one leaderboard entry: name, recipe/paper metadata, protocol key + sha256, score, data hash, target
    weight hashes, and the record's own provenance (its package version and git sha, not the installed ones)."""
    sub, meta = record.submission, record.submission.get("metadata", {}) or {}
    key = protocol_key(record.protocol)
    score = 100 * float(record.score["mean"])
    std = record.score.get("std")
    runs = len(record.runs)
    spread = f" $\\pm$ {100 * float(std):.2f} over {runs} seeds" if std is not None and runs > 1 else ""
    n_targets = len(record.targets)
    note = [
        f"Protocol {bib_escape(key)} (sha256 {record.protocol['sha256']})"
        + (", a smoke protocol: not a benchmark result" if record.protocol.get("kind") == "smoke" else ""),
        f"Score {score:.2f}\\%{spread}: mean over {n_targets} targets of the "
        f"{bib_escape(record.protocol.get('ranking_asr', 'target_correct'))} transfer ASR at "
        f"{bib_escape(record.protocol.get('ranking_cell', ''))}",
        f"data sha256 {record.data['sha256']}" + (" (partial run)" if record.data.get("partial") else ""),
        f"surrogate sha256 {sub['sha256']}",
        "target sha256 " + ", ".join(f"{bib_escape(n)} {bib_escape(sha)}" for n, sha in target_weights(record)),
        _produced_by(record.provenance),
    ]
    if record.off_protocol_precision:
        note.append(f"computed in {bib_escape(record.provenance.get('precision', ''))}, not the protocol's "
                    f"{bib_escape(record.provenance.get('protocol_precision', ''))}")  # fmt: skip
    if meta.get("recipe"):
        note.insert(0, f"Recipe: {bib_escape(meta['recipe'])}")
    if meta.get("paper"):
        note.insert(1 if meta.get("recipe") else 0, f"Paper: {bib_escape(meta['paper'])}")
    created = str(record.provenance.get("created_utc", ""))
    year = meta.get("year") or (created[:4] if re.fullmatch(r"\d{4}", created[:4]) else None)
    url = model_card_url(sub.get("source")) or meta.get("url")
    fields: list[tuple[str, str]] = [
        ("title", f"{{{bib_escape(sub['name'])}}}: surrogate evaluated on {{TransferBench}} {bib_escape(key)}"),
    ]
    authors = _authors(meta)
    if authors:
        fields.append(("author", authors))
    if year:
        fields.append(("year", bib_escape(year)))
    if url and _SAFE_URL.fullmatch(str(url)):
        fields.append(("url", str(url)))
    fields.append(("howpublished", f"TransferBench {bib_escape(record.provenance.get('package_version', ''))} "
                                   f"leaderboard entry"))  # fmt: skip
    fields.append(("note", ". ".join(note)))
    width = max(len(k) for k, _ in fields)
    body = ",\n".join(f"  {k:<{width}} = {{{v}}}" for k, v in fields)
    return f"@misc{{{entry_key(record)},\n{body}\n}}\n"


def cite_text(records: Iterable[Record] = ()) -> str:
    """What ``transferbench cite [RECORD ...]`` prints: the entries, then TransferBench, then the seed paper."""
    parts = [entry_bibtex(r) for r in records]
    return "\n".join([*parts, BENCHMARK_BIBTEX, seed_bibtex()])
