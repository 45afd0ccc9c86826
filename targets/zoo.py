"""Zoo entries are data (``TargetSpec``); one loader turns any entry into an eval-mode [0, 1]-input model.

Weights are looked up, in order, in an explicit mirror directory (``--weights-dir`` /
``TRANSFERBENCH_WEIGHTS_DIR``), the local cache, and finally downloaded from the pinned URL, unless
``TRANSFERBENCH_OFFLINE``/``HF_HUB_OFFLINE`` forbid it. Every file is checked against its pinned sha256
before it is unpickled (``weights_only=True``), and an HTML page where weights were expected is named as
such (the classic failure of file-sharing links).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from bench import paths
from bench.hashing import HashMismatch, sha256_file, verify_sha256
from bench.models import NormalizedModel, build_model
from bench.registry import Registry
from surrogates.submission import SurrogateConfig, load_state_strict

log = logging.getLogger(__name__)

Family = Literal["cnn", "vit", "adversarially-trained", "external", "smoke"]


class TargetError(RuntimeError):
    """A target could not be loaded; the message names the entry, the file and the fix."""


@dataclass(frozen=True)
class UrlWeights:
    """A checkpoint at a public URL, pinned by sha256 (torch.load with weights_only=True)."""

    url: str
    filename: str
    sha256: str
    state_key: str | None = "state_dict"
    strip_prefix: str = ""


@dataclass(frozen=True)
class HubWeights:
    """A file of a Hugging Face Hub model repo (timm weights are ``model.safetensors``).

    ``revision`` is a commit sha and ``sha256`` the file's hash; either may be None while not yet measured
    (entries with a None stay out of frozen protocols).
    """

    repo_id: str
    filename: str = "model.safetensors"
    revision: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class LocalWeights:
    """A safetensors file under TRANSFERBENCH_HOME produced by a project recipe (smoke zoo)."""

    relpath: str


@dataclass(frozen=True)
class TargetSpec:
    name: str
    family: Family
    architecture: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: UrlWeights | HubWeights | LocalWeights
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    # Expected clean accuracy per data content hash (ImageSet.content_sha256 of the protocol's full image
    # list): a loaded target that misses it by more than ACCURACY_TOLERANCE is refused as the wrong model.
    expected_accuracy: tuple[tuple[str, float], ...] = ()
    license: str = ""
    citation: str = ""
    notes: str = ""


TARGETS: Registry[TargetSpec] = Registry("target")
ACCURACY_TOLERANCE = 0.005  # half a point on 10,000 images: far above fp32 noise, far below any wrong model


def check_expected_accuracy(name: str, data_sha256: str, accuracy: float) -> float | None:
    """Compare with the zoo's pinned accuracy for this data; return the expectation (None if none is pinned)."""
    spec = TARGETS.get(name)
    expected = dict(spec.expected_accuracy).get(data_sha256)
    if expected is not None and abs(accuracy - expected) > ACCURACY_TOLERANCE:
        raise TargetError(
            f"target {name!r} scores {100 * accuracy:.2f}% on data {data_sha256[:12]}, the zoo pins "
            f"{100 * expected:.2f}%: wrong weights, preprocessing or data. Run `transferbench targets verify`."
        )
    return expected


def register(spec: TargetSpec) -> TargetSpec:
    TARGETS.add(spec.name, spec)
    return spec


@dataclass
class LoadedTarget:
    name: str
    model: nn.Module
    sha256: str
    source: str
    family: str


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml"))


def _download(spec: TargetSpec, w: UrlWeights, dest: Path) -> None:
    if paths.offline():
        raise TargetError(
            f"target {spec.name!r}: {w.filename} is not in the weights mirror or cache and downloads are disabled "
            f"(TRANSFERBENCH_OFFLINE/HF_HUB_OFFLINE). Put the file (sha256 {w.sha256}) into a folder and pass "
            f"--weights-dir or set TRANSFERBENCH_WEIGHTS_DIR; its source is {w.url}."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{w.filename}.", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s from %s", spec.name, w.url)
        torch.hub.download_url_to_file(w.url, str(tmp), progress=False)
        try:
            _check_file(spec, w, tmp)
        except HashMismatch as e:
            raise HashMismatch(
                f"target {spec.name!r}: the file downloaded from {w.url} does not have the pinned sha256 {w.sha256} "
                f"({e}). Nothing was kept. If the source changed, the zoo entry needs a new version."
            ) from None
        os.replace(tmp, dest)
    except OSError as e:
        raise TargetError(f"target {spec.name!r}: download of {w.url} failed ({e}). Use --weights-dir.") from None
    finally:
        tmp.unlink(missing_ok=True)


def _check_file(spec: TargetSpec, w: UrlWeights, path: Path) -> str:
    if _looks_like_html(path):
        raise TargetError(
            f"target {spec.name!r}: {path} is an HTML page, not a checkpoint (a link that answers with a web page). "
            f"Fetch {w.url} by hand and place it in --weights-dir."
        )
    fix = f"Delete it and fetch it again from {w.url}; if the source changed, the zoo entry needs a new version."
    return verify_sha256(path, w.sha256, what=f"target {spec.name!r}", fix=fix)


def resolve_weights(spec: TargetSpec, weights_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Local path and sha256 of the entry's verified weights file."""
    src = spec.source
    if isinstance(src, LocalWeights):
        path = paths.home() / src.relpath
        if not path.is_file():
            raise TargetError(f"target {spec.name!r}: {path} not found. Run `transferbench demo` to build it.")
        return path, sha256_file(path)
    mirror = weights_dir or os.environ.get("TRANSFERBENCH_WEIGHTS_DIR")
    candidates = [Path(mirror) / src.filename] if mirror else []
    candidates.append(paths.weights_cache() / src.filename)
    for path in candidates:
        if path.is_file():
            return path, _check_file(spec, src, path)
    if mirror:
        log.warning("%s not in mirror %s; trying cache/download", src.filename, mirror)
    dest = paths.weights_cache() / src.filename
    _download(spec, src, dest)
    return dest, src.sha256


def _state_dict(spec: TargetSpec, path: Path) -> dict[str, torch.Tensor]:
    src = spec.source
    if isinstance(src, LocalWeights):
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise TargetError(f"target {spec.name!r}: {path} is not a readable safetensors file ({e}).") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types; we re-raise with the file named
        raise TargetError(f"target {spec.name!r}: {path} is not a loadable checkpoint ({e}).") from None
    if src.state_key is not None:
        if not isinstance(obj, dict) or src.state_key not in obj:
            raise TargetError(f"target {spec.name!r}: {path} has no {src.state_key!r} entry.")
        obj = obj[src.state_key]
    p = src.strip_prefix
    return {k[len(p) :] if p and k.startswith(p) else k: v for k, v in obj.items()}


def load_target(
    name: str, *, weights_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> LoadedTarget:
    """Build, verify and load one zoo entry in eval mode."""
    spec = TARGETS.get(name)
    path, sha = resolve_weights(spec, weights_dir)
    model: NormalizedModel = build_model(spec.architecture, spec.num_classes, spec.mean, spec.std, **spec.arch_kwargs)
    cfg = SurrogateConfig(kind="single", architecture=spec.architecture, num_classes=spec.num_classes,
                          arch_kwargs=dict(spec.arch_kwargs))  # fmt: skip
    try:
        load_state_strict(model.net, _state_dict(spec, path), where=str(path), cfg=cfg)
    except ValueError as e:
        raise TargetError(f"target {spec.name!r}: {e}") from None
    source = spec.source.url if isinstance(spec.source, UrlWeights) else str(path)
    return LoadedTarget(spec.name, model.eval().to(device), sha, source, spec.family)


def load_targets(
    names: list[str] | tuple[str, ...],
    *,
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, LoadedTarget]:
    return {n: load_target(n, weights_dir=weights_dir, device=device) for n in names}


def copy_into_mirror(src: Path, mirror: Path) -> Path:
    """Place a weights file into a mirror folder (helper for air-gapped setups and tests)."""
    mirror.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(src, mirror / src.name))


__all__ = ["HashMismatch"]
