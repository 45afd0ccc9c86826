"""Zoo entries are data (``TargetSpec``); one loader turns any entry into an eval-mode [0, 1]-input model.

Where weights come from
-----------------------
* ``UrlWeights`` (a checkpoint at a URL): the mirror file ``<weights-dir>/<filename>``, then the cache
  ``$TRANSFERBENCH_HOME/weights/<filename>``, then a download from the URL into that cache.
* ``HubWeights`` (a file of a Hugging Face Hub model repo): the mirror file ``<weights-dir>/<repo_id>/<filename>``
  (e.g. ``<weights-dir>/timm/resnet50.tv_in1k/model.safetensors``), then ``huggingface_hub.hf_hub_download``,
  which serves the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``) and downloads from ``HF_ENDPOINT`` (default
  https://huggingface.co) at the entry's pinned ``revision``.
* ``LocalWeights``: a safetensors file under ``TRANSFERBENCH_HOME`` built by a project recipe (smoke zoo).

``<weights-dir>`` is ``--weights-dir`` or ``TRANSFERBENCH_WEIGHTS_DIR``. Air-gapped sites fill it by copying
files there (``transferbench targets fetch`` on a machine with access shows where each one lies);
``TRANSFERBENCH_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` forbid every download (the Hugging Face cache is still read).

Every file is read once and checked before it is loaded from those same bytes: a web answer where weights were
expected (an HTML page, a JSON error, a Git LFS pointer: the classic failure of file-sharing links, login walls and
proxies) is named as such, and the file's sha256 must equal the pinned one. An entry whose
sha256 is not pinned yet still loads, with a warning; the measured sha256 is returned and goes into every record,
and ``TargetSpec.pinned`` is False so that protocols using it stay provisional. Checkpoints are read without
executing code: safetensors, or ``torch.load(weights_only=True)``. Key handling (``state_key``, ``strip_prefix``,
``drop_unprefixed``) is data in the entry, never a branch on its name; the state must then match the architecture
key for key (``load_state_strict``).

Input size and preprocessing
----------------------------
Normalization (``mean``/``std``) lives inside the model, so attacks see [0, 1] images. A protocol's data loader
has already resized and center-cropped its images to the protocol's ``input_size``; nothing crops again. For a
target whose native input size (``TargetSpec.input_size``, from the timm pretrained config for timm entries)
differs from the protocol's, ``load_target(..., input_size=...)`` puts a differentiable resize to the native size,
with the entry's own ``interpolation``, in front of the model (``bench.models.adapters.ResizeInput``): an
Inception-v3 at 299 px on a 224 px protocol sees its images upsampled, and the perturbation budget stays defined
at the protocol's size. Entries without a native size (the CIFAR-10 and smoke zoos) take any size as it comes.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from bench import paths
from bench.hashing import HashMismatch, verify_sha256
from bench.hubclient import hub_endpoint, snapshot_commit
from bench.models import TIMM_PREFIX, NormalizedModel, build_model
from bench.models.adapters import INTERPOLATIONS, ResizeInput
from bench.registry import Registry
from surrogates.submission import SurrogateConfig, load_state_strict

log = logging.getLogger(__name__)

Family = Literal["cnn", "vit", "adversarially-trained", "external", "smoke"]
Interpolation = Literal["nearest", "bilinear", "bicubic"]
ENV_WEIGHTS_DIR = "TRANSFERBENCH_WEIGHTS_DIR"


class TargetError(RuntimeError):
    """A target could not be loaded; the message names the entry, the file and the fix."""


def _check_keys(where: str, state_key: str | None, strip_prefix: str, drop_unprefixed: bool) -> None:
    if state_key is not None and not state_key:
        raise ValueError(f"{where}: state_key must be None or a non-empty key")
    if drop_unprefixed and not strip_prefix:
        raise ValueError(f"{where}: drop_unprefixed needs a strip_prefix (the keys to keep)")


@dataclass(frozen=True)
class UrlWeights:
    """A checkpoint at a public URL (read with ``torch.load(weights_only=True)``).

    ``sha256`` None = not measured yet: the file loads with a warning and the entry is not ``pinned``.
    Key handling: the state is ``checkpoint[state_key]`` (the whole file when None); ``strip_prefix`` is removed
    from the keys that carry it, and with ``drop_unprefixed`` the keys without it are dropped (e.g. the second,
    attacker-side copy of the network that adversarial-training checkpoints keep).
    """

    url: str
    filename: str
    sha256: str | None
    state_key: str | None = "state_dict"
    strip_prefix: str = ""
    drop_unprefixed: bool = False

    def __post_init__(self) -> None:
        _check_keys(self.url, self.state_key, self.strip_prefix, self.drop_unprefixed)


@dataclass(frozen=True)
class HubWeights:
    """A file of a Hugging Face Hub model repo (timm weights are ``model.safetensors``).

    ``revision`` is a commit sha and ``sha256`` the file's hash; either may be None while not yet measured (the
    entry is then not ``pinned``, and protocols that use it stay provisional). ``format`` says how the file is
    read: ``safetensors``, or ``torch`` for pickled checkpoints (``weights_only=True``); the key handling fields
    mean what they mean for ``UrlWeights``. The mirror layout is ``<weights-dir>/<repo_id>/<filename>``.
    """

    repo_id: str
    filename: str = "model.safetensors"
    revision: str | None = None
    sha256: str | None = None
    format: Literal["safetensors", "torch"] = "safetensors"
    state_key: str | None = None
    strip_prefix: str = ""
    drop_unprefixed: bool = False

    def __post_init__(self) -> None:
        owner, _, name = self.repo_id.partition("/")
        if not owner or not name or "/" in name:
            raise ValueError(f"HubWeights.repo_id must be 'owner/name', got {self.repo_id!r}")
        if PurePosixPath(self.filename).is_absolute() or ".." in PurePosixPath(self.filename).parts:
            raise ValueError(f"HubWeights.filename must be a path inside the repo, got {self.filename!r}")
        if self.format not in ("safetensors", "torch"):
            raise ValueError(f"HubWeights.format must be 'safetensors' or 'torch', got {self.format!r}")
        _check_keys(f"hf://{self.repo_id}/{self.filename}", self.state_key, self.strip_prefix, self.drop_unprefixed)

    @property
    def mirror_relpath(self) -> str:
        """Where the file lies inside a weights mirror."""
        return f"{self.repo_id}/{self.filename}"

    def location(self, revision: str | None = None) -> str:
        """``hf://owner/name@revision/filename`` (without ``@`` when no revision is known)."""
        rev = revision or self.revision
        return f"hf://{self.repo_id}{'@' + rev if rev else ''}/{self.filename}"


@dataclass(frozen=True)
class LocalWeights:
    """A safetensors file under TRANSFERBENCH_HOME produced by a project recipe (smoke zoo)."""

    relpath: str


WeightsSource = UrlWeights | HubWeights | LocalWeights


@dataclass(frozen=True)
class TargetSpec:
    name: str
    family: Family
    architecture: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: WeightsSource
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    # Expected clean accuracy per data content hash (ImageSet.content_sha256 of the protocol's full image
    # list): a loaded target that misses it by more than ACCURACY_TOLERANCE is refused as the wrong model.
    expected_accuracy: tuple[tuple[str, float], ...] = ()
    license: str = ""
    citation: str = ""
    notes: str = ""
    # The model's native input (C, H, W) and the interpolation its preprocessing resizes with; None = the model
    # takes any size (no resize). For timm entries both come from the pretrained config (``timm_target``).
    input_size: tuple[int, int, int] | None = None
    interpolation: Interpolation = "bilinear"
    # The pretrained config's center-crop fraction, recorded for reference: protocols crop once, in the loader.
    crop_pct: float | None = None
    # timm pretrained tag: the weights are timm's "<architecture without 'timm:'>.<pretrained_tag>".
    pretrained_tag: str | None = None

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"target {self.name!r}: interpolation must be one of {INTERPOLATIONS}")
        if self.input_size is not None:
            if len(self.input_size) != 3 or min(self.input_size) < 1:
                raise ValueError(f"target {self.name!r}: input_size must be (C, H, W), got {self.input_size}")
            if len(self.mean) != self.input_size[0]:
                raise ValueError(
                    f"target {self.name!r}: {len(self.mean)} mean values for {self.input_size[0]} channels"
                )
        if self.pretrained_tag is not None and not self.architecture.startswith(TIMM_PREFIX):
            raise ValueError(f"target {self.name!r}: pretrained_tag is for timm architectures ({TIMM_PREFIX}<name>)")

    @property
    def timm_name(self) -> str | None:
        """timm's ``<arch>.<tag>`` name of the weights (None for entries that are not timm pretrained weights)."""
        if self.pretrained_tag is None:
            return None
        return f"{self.architecture[len(TIMM_PREFIX) :]}.{self.pretrained_tag}"

    @property
    def pinned(self) -> bool:
        """True when the weights are fixed by sha256 (and, on the Hub, by a commit): a frozen protocol needs this.

        Locally built weights (smoke zoo) are never pinned: they are whatever the local recipe produced.
        """
        src = self.source
        if isinstance(src, HubWeights):
            return src.sha256 is not None and src.revision is not None
        if isinstance(src, UrlWeights):
            return src.sha256 is not None
        return False


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


def unpinned_targets(names: Iterable[str] | None = None) -> list[str]:
    """The entries (of ``names``, default all) whose weights are not pinned: their protocols stay provisional."""
    return [n for n in (TARGETS if names is None else names) if not TARGETS.get(n).pinned]


def describe_source(spec: TargetSpec) -> str:
    """One line on where an entry's weights come from and what pins them (for ``transferbench targets list``)."""
    src = spec.source
    if isinstance(src, LocalWeights):
        return f"$TRANSFERBENCH_HOME/{src.relpath} (built locally)"
    sha = f"sha256 {src.sha256[:12]}" if src.sha256 else "sha256 not pinned"
    if isinstance(src, UrlWeights):
        return f"{src.url} ({sha})"
    rev = f"revision {src.revision[:12]}" if src.revision else "revision not pinned"
    return f"{src.location(src.revision[:12] if src.revision else None)} ({rev}, {sha})"


def timm_target(
    name: str,
    timm_name: str,
    *,
    family: Family,
    citation: str,
    notes: str = "",
    source: WeightsSource | None = None,
    license: str | None = None,
) -> TargetSpec:
    """An entry for timm's pretrained weights ``<arch>.<tag>``, preprocessing taken from their pretrained config.

    The config ships with the installed timm (no network): number of classes, mean/std, native input size,
    interpolation and crop fraction, license, and the weights' location (``hf_hub_id``, else ``url``, which
    gives an unpinned ``UrlWeights``). A bare architecture name is refused: the tag decides which weights.
    """
    import timm
    from timm.models import get_pretrained_cfg

    arch, _, tag = timm_name.partition(".")
    if not tag:
        known = timm.list_pretrained(f"{arch}.*")[:8]
        raise ValueError(f"target {name!r}: {timm_name!r} has no pretrained tag; name the weights, one of {known}")
    if not timm.is_model(arch):
        raise ValueError(f"target {name!r}: timm has no architecture {arch!r} (timm {timm.__version__})")
    try:
        cfg = get_pretrained_cfg(timm_name, allow_unregistered=False)
    except RuntimeError:
        cfg = None
    if cfg is None:
        known = timm.list_pretrained(f"{arch}.*")
        raise ValueError(f"target {name!r}: timm {timm.__version__} has no weights {timm_name!r}; tags: {known}")
    if cfg.label_offset:
        raise ValueError(f"target {name!r}: {timm_name} has label_offset={cfg.label_offset} (a background class)")
    if source is None:
        if cfg.hf_hub_id:
            source = HubWeights(cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors")
        elif cfg.url:
            source = UrlWeights(cfg.url, cfg.url.rsplit("/", 1)[1], None, state_key=None)
        else:
            raise ValueError(f"target {name!r}: the pretrained config of {timm_name} names no weights; pass source=")
    return TargetSpec(
        name=name,
        family=family,
        architecture=f"{TIMM_PREFIX}{arch}",
        num_classes=int(cfg.num_classes),
        mean=tuple(float(v) for v in cfg.mean),
        std=tuple(float(v) for v in cfg.std),
        source=source,
        license=(cfg.license or "") if license is None else license,
        citation=citation,
        notes=notes,
        input_size=(int(cfg.input_size[0]), int(cfg.input_size[1]), int(cfg.input_size[2])),
        interpolation=cfg.interpolation,
        crop_pct=None if cfg.crop_pct is None else float(cfg.crop_pct),
        pretrained_tag=tag,
    )


@dataclass
class LoadedTarget:
    name: str
    model: nn.Module
    sha256: str  # measured: equal to the pinned value, or the value that pins nothing yet (see ``pinned``)
    source: str
    family: str
    pinned: bool = True
    # The protocol image size (C, H, W) or (H, W) the model was built for (``load_target(input_size=...)``): the
    # model resizes images of this size to the entry's native size when they differ. None = built without one,
    # so a target with a native size then sees protocol images as they come.
    input_size: tuple[int, ...] | None = None


@dataclass(frozen=True)
class _Resolved:
    path: Path
    sha256: str
    source: str  # where the file comes from: URL, hf://repo@commit/file, or the local path
    data: bytes = field(repr=False)  # the file's content, read once: hashed, then loaded from these same bytes


_PROBE_BYTES = 512  # how much of a file is inspected for a web answer


def _text_kind(head: bytes) -> str | None:
    """What a text answer served in place of weights is ("an HTML page", "a JSON document", ...), else None.

    Weights files are binary from their first bytes: safetensors starts with an 8-byte little-endian header length
    (zero bytes), torch's zip files with ``PK\\x03\\x04``, pickles and numpy files with a byte above 0x7f that
    is not valid UTF-8. Error pages decode as text: UTF-8 (with or without a byte-order mark), or UTF-16/32 with
    one; their first character then says what they are. Plain text that is none of these (e.g. a wrong file of
    words) is left to the sha256 check and the loader.
    """
    text = _decode_text(head)
    if text is None:
        return None
    t = text.lstrip().lower()
    if t.startswith("<?xml"):
        return "an XML document"
    if t[:1] == "<" and (t[1:2].isalpha() or t[1:2] in ("!", "/")):  # <!doctype, <!-- comment -->, <html>, <body>
        return "an HTML page"
    if t[:1] in ("{", "["):
        return "a JSON document"
    if t.startswith("version https://git-lfs"):
        return "a Git LFS pointer file"
    return None


# Byte-order marks and the codec that drops them; UTF-32 LE comes first because its mark begins with UTF-16 LE's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _decode_text(head: bytes) -> str | None:
    """``head`` as text when all of it decodes to printable characters (and whitespace), else None."""
    encoding = next((enc for bom, enc in _BOMS if head.startswith(bom)), "utf-8")
    try:  # incremental: a character cut at the end of the probe is not an error
        text = codecs.getincrementaldecoder(encoding)().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    if not text.strip() or not all(c.isprintable() or c in "\t\n\r\f\v" for c in text):
        return None
    return text


def _sha256_verified(spec: TargetSpec, path: Path, data: bytes, expected: str | None, origin: str, fix: str) -> str:
    """sha256 of a weights file's bytes after checking they are not a web answer and, when pinned, the hash."""
    kind = _text_kind(data[:_PROBE_BYTES])
    if kind is not None:
        raise TargetError(
            f"target {spec.name!r}: {path} is {kind}, not a checkpoint (a link, login wall or proxy that answers "
            f"with a web page or an error). Fetch {origin} by hand and place it in --weights-dir."
        )
    if expected is not None:
        return verify_sha256(data, expected, what=f"target {spec.name!r}: {path}", fix=fix)
    actual = hashlib.sha256(data).hexdigest()
    log.warning(
        "target %r: %s is not pinned by sha256 in the zoo; measured %s (recorded with every result). "
        "Results with it stay provisional until the entry pins it.",
        spec.name,
        path,
        actual,
    )
    return actual


def _read_verified(spec: TargetSpec, path: Path, expected: str | None, origin: str, fix: str) -> _Resolved:
    """Read ``path`` once and verify its bytes; ``_Resolved.source`` is ``origin``."""
    data = path.read_bytes()
    return _Resolved(path, _sha256_verified(spec, path, data, expected, origin, fix), origin, data)


def _mirror(weights_dir: str | os.PathLike | None) -> Path | None:
    mirror = weights_dir or os.environ.get(ENV_WEIGHTS_DIR)
    return Path(mirror).expanduser() if mirror else None


def _download(spec: TargetSpec, w: UrlWeights, dest: Path) -> _Resolved:
    """Download into ``dest`` atomically and verify it. Nothing is kept when the check fails."""
    if paths.offline():
        pin = f" (sha256 {w.sha256})" if w.sha256 else ""
        raise TargetError(
            f"target {spec.name!r}: {w.filename} is not in the weights mirror or cache and downloads are disabled "
            f"(TRANSFERBENCH_OFFLINE/HF_HUB_OFFLINE). Put the file{pin} into a folder and pass "
            f"--weights-dir or set {ENV_WEIGHTS_DIR}; its source is {w.url}."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{w.filename}.", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s from %s", spec.name, w.url)
        torch.hub.download_url_to_file(w.url, str(tmp), progress=False)
        try:
            resolved = _read_verified(spec, tmp, w.sha256, w.url, "")
        except HashMismatch as e:
            raise HashMismatch(
                f"target {spec.name!r}: the file downloaded from {w.url} does not have the pinned sha256 {w.sha256} "
                f"({e}). Nothing was kept. If the source changed, the zoo entry needs a new version."
            ) from None
        os.replace(tmp, dest)
        return _Resolved(dest, resolved.sha256, w.url, resolved.data)
    except OSError as e:
        raise TargetError(f"target {spec.name!r}: download of {w.url} failed ({e}). Use --weights-dir.") from None
    finally:
        tmp.unlink(missing_ok=True)


def _resolve_url(spec: TargetSpec, src: UrlWeights, mirror: Path | None) -> _Resolved:
    fix = f"Delete it and fetch it again from {src.url}; if the source changed, the zoo entry needs a new version."
    candidates = [mirror / src.filename] if mirror else []
    candidates.append(paths.weights_cache() / src.filename)
    for path in candidates:
        if path.is_file():
            return _read_verified(spec, path, src.sha256, src.url, fix)
    if mirror:
        log.warning("%s not in mirror %s; trying cache/download", src.filename, mirror)
    return _download(spec, src, paths.weights_cache() / src.filename)


def _snapshot_commit(path: Path, filename: str) -> str | None:
    """The commit of a file in the Hugging Face cache (``.../snapshots/<commit>/<filename>``), if it is one."""
    depth = len(PurePosixPath(filename).parts)
    return snapshot_commit(path.parents[depth - 1]) if len(path.parents) > depth else None


def _hub_download(spec: TargetSpec, src: HubWeights, mirror: Path | None) -> Path:
    """``hf_hub_download`` at the pinned revision; offline it only reads the Hugging Face cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    offline = paths.offline()
    endpoint = hub_endpoint()
    where = f"{src.filename} of Hub model repo {src.repo_id} at revision {src.revision or 'main (not pinned)'}"
    place = f"{mirror or '<weights-dir>'}/{src.mirror_relpath}"
    try:
        local = hf_hub_download(
            src.repo_id, src.filename, revision=src.revision, local_files_only=offline, endpoint=endpoint
        )
    except LocalEntryNotFoundError as e:
        if offline:
            raise TargetError(
                f"target {spec.name!r}: {where} is neither in the weights mirror nor in the Hugging Face cache, and "
                f"downloads are disabled (TRANSFERBENCH_OFFLINE/HF_HUB_OFFLINE). Run `transferbench targets fetch "
                f"{spec.name}` where the Hub is reachable and copy the file to {place} (mirror layout "
                f"<weights-dir>/<repo_id>/<filename>; pass --weights-dir or set {ENV_WEIGHTS_DIR})."
            ) from None
        raise TargetError(
            f"target {spec.name!r}: {where} could not be fetched from {endpoint or 'the Hub'} and is not cached "
            f"({e.__cause__ or e}). Check the connection or HF_ENDPOINT, or place the file at {place}."
        ) from None
    except (EntryNotFoundError, HfHubHTTPError) as e:  # missing repo, revision or file; auth; server errors
        lines = str(e).strip().splitlines()
        detail = getattr(e, "server_message", None) or (lines[0] if lines else "")
        raise TargetError(
            f"target {spec.name!r}: {where} could not be downloaded ({type(e).__name__}: {detail}). Check the "
            f"entry's repo_id/revision/filename, or place the file at {place}."
        ) from None
    return Path(local)


def _resolve_hub(spec: TargetSpec, src: HubWeights, mirror: Path | None) -> _Resolved:
    if mirror is not None:
        path = mirror / src.repo_id / src.filename
        if path.is_file():
            fix = f"Replace it with {src.location()} (sha256 {src.sha256})."
            return _read_verified(spec, path, src.sha256, src.location(), fix)
        log.warning("%s not in mirror %s; trying the Hugging Face cache/Hub", src.mirror_relpath, mirror)
    path = _hub_download(spec, src, mirror)
    refetch = (
        f"delete {path.resolve()} (or use `hf cache delete`) and run `transferbench targets fetch {spec.name}` again."
    )
    if src.revision is None:
        fix = f"The repo's main branch may have moved since the entry was written (pin `revision`), or {refetch}"
    else:
        fix = "A pinned revision cannot change upstream: the cached copy is damaged or the entry's sha256 is wrong; "
        fix += refetch
    resolved = _read_verified(spec, path, src.sha256, src.location(), fix)
    return _Resolved(path, resolved.sha256, src.location(_snapshot_commit(path, src.filename)), resolved.data)


def _resolve(spec: TargetSpec, weights_dir: str | os.PathLike | None) -> _Resolved:
    src = spec.source
    if isinstance(src, LocalWeights):
        path = paths.home() / src.relpath
        if not path.is_file():
            raise TargetError(f"target {spec.name!r}: {path} not found. Run `transferbench demo` to build it.")
        data = path.read_bytes()
        return _Resolved(path, hashlib.sha256(data).hexdigest(), str(path), data)
    if isinstance(src, HubWeights):
        return _resolve_hub(spec, src, _mirror(weights_dir))
    return _resolve_url(spec, src, _mirror(weights_dir))


def resolve_weights(spec: TargetSpec, weights_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Local path and sha256 of the entry's verified weights file (fetching it if allowed and needed)."""
    r = _resolve(spec, weights_dir)
    return r.path, r.sha256


def _read(spec: TargetSpec, data: bytes, path: Path) -> Any:
    """Deserialize the verified bytes of ``path`` (never the file again: what was hashed is what is loaded)."""
    src = spec.source
    fmt = "safetensors" if isinstance(src, LocalWeights) else src.format if isinstance(src, HubWeights) else "torch"
    if fmt == "safetensors":
        try:
            return load_safetensors(data)
        except (SafetensorError, OSError, ValueError) as e:
            raise TargetError(f"target {spec.name!r}: {path} is not a readable safetensors file ({e}).") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types; we re-raise with the file named
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ""
        if "weights only" in str(e).lower() or "unsupported global" in str(e).lower():
            hint = (
                " It pickles Python objects besides tensors, which TransferBench never unpickles: convert its "
                "state dict to safetensors once, on a machine you trust, and register that file as a local entry."
            )
        raise TargetError(f"target {spec.name!r}: {path} is not a loadable checkpoint ({first}).{hint}") from None


def _state_dict(spec: TargetSpec, data: bytes, path: Path) -> dict[str, torch.Tensor]:
    obj, src = _read(spec, data, path), spec.source
    if isinstance(src, LocalWeights):
        return obj
    if src.state_key is not None:
        if not isinstance(obj, dict) or src.state_key not in obj:
            raise TargetError(f"target {spec.name!r}: {path} has no {src.state_key!r} entry.")
        obj = obj[src.state_key]
    if not isinstance(obj, dict):
        raise TargetError(f"target {spec.name!r}: {path} holds a {type(obj).__name__}, not a state dict.")
    p = src.strip_prefix
    if src.drop_unprefixed:
        obj = {k: v for k, v in obj.items() if k.startswith(p)}
        if not obj:
            raise TargetError(f"target {spec.name!r}: {path} has no keys starting with {p!r}.")
    return {k[len(p) :] if p and k.startswith(p) else k: v for k, v in obj.items()}


def _native_resize(spec: TargetSpec, input_size: tuple[int, ...] | None) -> tuple[int, int] | None:
    """The size to resize protocol images to, or None when the target takes them as they are."""
    if input_size is None or spec.input_size is None:
        return None
    size = tuple(int(v) for v in input_size)
    if len(size) not in (2, 3):
        raise ValueError(f"input_size must be (C, H, W) or (H, W), got {input_size!r}")
    if len(size) == 3 and size[0] != spec.input_size[0]:
        raise TargetError(
            f"target {spec.name!r} takes {spec.input_size[0]}-channel images, the protocol gives {size[0]} channels."
        )
    native = (spec.input_size[1], spec.input_size[2])
    return None if size[-2:] == native else native


def load_target(
    name: str,
    *,
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    input_size: tuple[int, ...] | None = None,
) -> LoadedTarget:
    """Build, verify and load one zoo entry in eval mode.

    ``input_size`` is the protocol's image size, (C, H, W) or (H, W): when it differs from the entry's native
    size the model is wrapped in ``ResizeInput`` (see the module docstring); None leaves the model as it is.
    The size is kept as ``LoadedTarget.input_size`` so that a caller can check the model was built for its data.
    """
    spec = TARGETS.get(name)
    resolved = _resolve(spec, weights_dir)
    resize = _native_resize(spec, input_size)
    model: NormalizedModel = build_model(spec.architecture, spec.num_classes, spec.mean, spec.std, **spec.arch_kwargs)
    cfg = SurrogateConfig(kind="single", architecture=spec.architecture, num_classes=spec.num_classes,
                          arch_kwargs=dict(spec.arch_kwargs))  # fmt: skip
    try:
        state = _state_dict(spec, resolved.data, resolved.path)
        load_state_strict(model.net, state, where=str(resolved.path), cfg=cfg)
    except ValueError as e:
        raise TargetError(f"target {spec.name!r}: {e}") from None
    net: nn.Module = model if resize is None else ResizeInput(model, resize, spec.interpolation)
    size = None if input_size is None else tuple(int(v) for v in input_size)
    return LoadedTarget(
        spec.name, net.eval().to(device), resolved.sha256, resolved.source, spec.family, spec.pinned, size
    )


def load_targets(
    names: list[str] | tuple[str, ...],
    *,
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    input_size: tuple[int, ...] | None = None,
) -> dict[str, LoadedTarget]:
    """``load_target`` for each name, in order."""
    return {n: load_target(n, weights_dir=weights_dir, device=device, input_size=input_size) for n in names}


def copy_into_mirror(src: Path, mirror: Path, relpath: str | None = None) -> Path:
    """Place a weights file into a mirror folder (helper for air-gapped setups and tests).

    ``relpath`` is the file's place inside the mirror (``HubWeights.mirror_relpath`` for Hub entries); default
    its own name (the layout of ``UrlWeights``).
    """
    dest = mirror / (relpath or src.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dest)  # a reader never sees half a file under the final name
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


__all__ = ["HashMismatch"]
