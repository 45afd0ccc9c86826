"""ImageNet-1k images: a fixed list of validation images, and the 1,000-image "ImageNet-compatible" set.

**Class order** is the standard ImageNet-1k order (sorted WordNet ids, as in timm and torchvision);
:func:`imagenet_wnids` and :func:`imagenet_class_names` read it offline from timm's ``ImageNetInfo``.

**Validation images** (:func:`load_imagenet_val`). An image's id is its number in the ILSVRC2012 validation
set minus one: id 0 is ``ILSVRC2012_val_00000001.JPEG``, whatever source it is read from. Sources, first match
wins: the ``data_dir`` argument; ``$TRANSFERBENCH_IMAGENET_DIR``; the Hugging Face Hub dataset
``ILSVRC/imagenet-1k`` (gated: accept its terms on the Hub and provide a token, ``HF_TOKEN`` or
``huggingface-cli login``) through ``datasets`` with only its validation files (``data/validation-*.parquet``).
Mirror layouts, looked up in this order:

* **parquet** with columns ``image`` = struct {bytes, path} and ``label`` (0..999): ``<dir>/validation.parquet``,
  ``<dir>/validation/*.parquet`` or Hub shards ``<dir>/**/validation-*.parquet``
  (``data/validation-00000-of-00014.parquet``).
  ``image.path`` must hold the file name (the Hub stores ``ILSVRC2012_val_00000001_n01751748.JPEG``);
* **image folder** ``<dir>/val/<wnid>/ILSVRC2012_val_########.JPEG`` (the layout of torchvision's ``ImageFolder``
  and of the usual ``valprep.sh``), or a flat ``<dir>/val/`` whose file names end in the wnid
  (``ILSVRC2012_val_00000001_n01751748.JPEG``, as in the Hub's ``val_images.tar.gz``).

**ImageNet-compatible set** (:func:`load_imagenet_compatible`): the 1,000 299x299 PNG images of the development
set of the NIPS 2017 adversarial competition, used by the transfer-attack papers (DIM, TI, and many after them).
Only local copies exist; ``data_dir`` or ``$TRANSFERBENCH_IMAGENET_COMPATIBLE_DIR`` names a directory holding
one of these label files (looked up in this order):

* ``images.csv`` (Kaggle release) or ``dev_dataset.csv`` (cleverhans ``nips17_adversarial_competition/dataset``):
  columns ``ImageId``, ``TrueLabel``, ``TargetClass`` (others ignored); labels are 1..1000 in the 1001-class
  Inception convention (0 = background), so 1 is subtracted; images ``<ImageId>.png`` in ``images/`` or beside the CSV;
* ``labels.csv`` in the layout of TransferAttack (Trustworthy-AI-Group): columns ``filename``, ``label`` and
  optionally ``targeted_label``, labels 0..999; images ``images/<filename>``. (TransferAttack ships its own
  1,000 validation images in this layout, not the NIPS 2017 images.)

Ids are positions in the order of the image names (``ImageId`` or ``filename``, plain string order), not of the
CSV rows. The competition's target classes are returned by :func:`imagenet_compatible_target_labels` in the
same order.

**Preparation.** Validation images: :data:`IMAGENET_PREPARATION`, the standard evaluation transform (resize
the shorter side to 256, center crop 224; see :mod:`bench.data.prepare`). Compatible set:
:data:`IMAGENET_COMPATIBLE_PREPARATION`, no crop (the images are square 299x299 crops made by the organisers;
the papers that use them at 224 resize the whole picture, as TransferAttack does), PIL bilinear.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from bench.data.imageset import ImageSet
from bench.data.prepare import (
    IMAGE_SUFFIXES,
    WNID_PATTERN,
    Entry,
    Preparation,
    check_wnid,
    class_folders,
    decode_entries,
    entries_from_hub_table,
    entries_from_parquet,
    find_parquet,
    image_files,
    load_hub_table,
    make_imageset,
    wnid_in_name,
)

logger = logging.getLogger(__name__)

IMAGENET_NUM_CLASSES = 1000
IMAGENET_VAL_SIZE = 50_000
IMAGENET_DIR_ENV = "TRANSFERBENCH_IMAGENET_DIR"
IMAGENET_COMPATIBLE_DIR_ENV = "TRANSFERBENCH_IMAGENET_COMPATIBLE_DIR"
IMAGENET_HUB_ID = "ILSVRC/imagenet-1k"
# NOT pinned to a commit: the commit of the repository's parquet layout could not be confirmed when this was
# written. Replace "main" by the 40-hex commit of https://huggingface.co/datasets/ILSVRC/imagenet-1k before a
# protocol that loads from the Hub is frozen; until then the content hash of the loaded set is the only check.
IMAGENET_HUB_REVISION = "main"
IMAGENET_HUB_VAL_FILES = "data/validation-*.parquet"
IMAGENET_PREPARATION = Preparation(224).describe()
IMAGENET_COMPATIBLE_PREPARATION = Preparation(224, crop_fraction=1.0).describe()

_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})")
_VAL_HELP = (
    f"pass --data-dir (data_dir=...) or set {IMAGENET_DIR_ENV} to a local ImageNet mirror: an image folder "
    "val/<wnid>/ILSVRC2012_val_########.JPEG, or parquet with columns image={bytes, path} and label "
    "(validation.parquet or **/validation-*.parquet as on the Hub). The Hub dataset ILSVRC/imagenet-1k is gated: "
    "accept its terms at https://huggingface.co/datasets/ILSVRC/imagenet-1k and set HF_TOKEN "
    "(or run huggingface-cli login)"
)
_COMPATIBLE_HELP = (
    f"pass data_dir=... or set {IMAGENET_COMPATIBLE_DIR_ENV} to a directory holding images.csv or dev_dataset.csv "
    "(ImageId, TrueLabel, TargetClass; labels 1..1000) with images/<ImageId>.png, or TransferAttack's labels.csv "
    "(filename, label[, targeted_label]; labels 0..999) with images/<filename>"
)


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k WordNet ids in class-index order (read from timm, offline)."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo("imagenet-1k").label_names())


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """Short names of the 1,000 classes (first WordNet lemma: 'tench', 'English springer', ...).

    Two names occur twice ('crane' the bird and the machine, 'maillot'); labels are indices, names are for people.
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return tuple(info.index_to_description(i).split(",")[0].strip() for i in range(IMAGENET_NUM_CLASSES))


# ----------------------------------------------------------------------------------------------------------------------
# ImageNet-1k validation images
# ----------------------------------------------------------------------------------------------------------------------


def load_imagenet_val(ids: Sequence[int], data_dir: str | os.PathLike[str] | None = None, size: int = 224) -> ImageSet:
    """Load the ImageNet-1k validation images ``ids`` (0 = ILSVRC2012_val_00000001), in the order given.

    Args:
        ids: distinct ints in [0, 50000).
        data_dir: a local mirror (see the module docstring). When None, ``$TRANSFERBENCH_IMAGENET_DIR`` is used
            if set, else the Hugging Face Hub (gated: needs a token).
        size: side of the square output; the shorter side is first resized to ``floor(size / 0.875)``.

    Raises:
        ValueError: bad ids or size, or a malformed mirror (names the file or row).
        FileNotFoundError: the mirror is missing, holds neither layout, or lacks some of the ids.
        RuntimeError: the Hub could not be used (offline, no token, no network) and no mirror was given.
    """
    wanted = _check_ids(ids)
    prep = Preparation(size)
    start = time.perf_counter()
    if data_dir is None and os.environ.get(IMAGENET_DIR_ENV):
        data_dir, origin = os.environ[IMAGENET_DIR_ENV], f"environment variable {IMAGENET_DIR_ENV}"
    else:
        origin = "data_dir argument (--data-dir)"
    if data_dir is None:
        table = load_hub_table(
            IMAGENET_HUB_ID, IMAGENET_HUB_REVISION, IMAGENET_HUB_VAL_FILES, "validation", "ImageNet", _VAL_HELP
        )
        source = f"Hugging Face Hub {IMAGENET_HUB_ID}@{IMAGENET_HUB_REVISION} ({IMAGENET_HUB_VAL_FILES})"
        entries = entries_from_hub_table(table, source, IMAGENET_NUM_CLASSES)
    else:
        entries, source = _val_mirror_entries(Path(data_dir).expanduser(), origin)
    selected = _select(entries, wanted, source)
    pixels = decode_entries(selected, prep)
    imageset = make_imageset(pixels, [e.label for e in selected], wanted, imagenet_class_names(), source)
    logger.info(
        "loaded %d ImageNet validation images from %s in %.1f s", len(wanted), source, time.perf_counter() - start
    )
    return imageset


def _check_ids(ids: Sequence[int]) -> list[int]:
    values = [int(i) for i in ids]
    if not values:
        raise ValueError("ImageNet validation ids are empty; pass at least one id in [0, 50000)")
    bad = [i for i in values if not 0 <= i < IMAGENET_VAL_SIZE]
    if bad:
        raise ValueError(
            f"ImageNet validation ids {bad[:5]} are outside [0, {IMAGENET_VAL_SIZE}); id i is ILSVRC2012_val_<i+1>.JPEG"
        )
    if len(set(values)) != len(values):
        raise ValueError("ImageNet validation ids hold duplicates; list each image once")
    return values


def _val_mirror_entries(root: Path, origin: str) -> tuple[list[Entry], str]:
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(f"ImageNet mirror {root} (from the {origin}) {what}; {_VAL_HELP}")
    files = find_parquet(root, "validation")
    if files:
        shown = ", ".join(p.relative_to(root).as_posix() for p in files)
        return entries_from_parquet(files, IMAGENET_NUM_CLASSES), f"parquet mirror {root} ({shown})"
    folder = root / "val"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ImageNet mirror {root} (from the {origin}) has neither validation parquet files nor a val/ folder; "
            f"{_VAL_HELP}"
        )
    if any(p.is_dir() and WNID_PATTERN.fullmatch(p.name) for p in folder.iterdir()):
        entries = [
            Entry(f"{d.name}/{p.name}", label, p)
            for label, d in class_folders(folder, imagenet_wnids(), "ImageNet")
            for p in image_files(d)
        ]
    else:
        entries = [_flat_entry(p) for p in image_files(folder)]
    if not entries:
        raise FileNotFoundError(f"ImageNet image folder {folder} holds no .JPEG/.jpg/.png files; {_VAL_HELP}")
    return entries, f"image-folder mirror {folder}"


@functools.lru_cache(maxsize=1)
def _wnid_index() -> dict[str, int]:
    return {wnid: label for label, wnid in enumerate(imagenet_wnids())}


def _flat_entry(path: Path) -> Entry:
    wnid = wnid_in_name(path.name)
    index = _wnid_index()
    if wnid not in index:
        raise ValueError(
            f"ImageNet image {path} lies in a flat val/ folder but its name carries no known wnid; sort the "
            "images into val/<wnid>/ sub-folders, or name them ILSVRC2012_val_########_<wnid>.JPEG"
        )
    return Entry(path.name, index[wnid], path)


def _select(entries: Sequence[Entry], wanted: Sequence[int], source: str) -> list[Entry]:
    """The entries of the ``wanted`` ids, in that order; each stored name must carry its validation number."""
    by_id: dict[int, Entry] = {}
    wnids = imagenet_wnids()
    for entry in entries:
        match = _VAL_NAME.search(PurePosixPath(entry.name.replace("\\", "/")).name)
        if match is None:
            raise ValueError(
                f"ImageNet image {entry.describe()} has no ILSVRC2012_val_######## file name, so its id is unknown; "
                "a validation mirror holds only validation images under their original names"
            )
        image_id = int(match.group(1)) - 1
        if image_id in by_id:
            raise ValueError(f"ImageNet images {by_id[image_id].describe()} and {entry.describe()} have the same id")
        by_id[image_id] = entry
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise FileNotFoundError(
            f"ImageNet source {source} lacks {len(missing)} of the {len(wanted)} requested validation images, e.g. ids "
            f"{missing[:5]} (ILSVRC2012_val_{missing[0] + 1:08d}.JPEG); complete the mirror"
        )
    selected = [by_id[i] for i in wanted]
    for entry in selected:
        check_wnid(entry, wnids, "ImageNet")
    return selected


# ----------------------------------------------------------------------------------------------------------------------
# The ImageNet-compatible set (NIPS 2017 adversarial competition)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CsvLayout:
    file: str
    name: str  # column of the image name
    label: str
    target: str
    offset: int  # subtracted from the stored labels
    description: str


_LAYOUTS = (
    _CsvLayout("images.csv", "ImageId", "TrueLabel", "TargetClass", 1, "NIPS 2017 images.csv (labels 1..1000)"),
    _CsvLayout(
        "dev_dataset.csv", "ImageId", "TrueLabel", "TargetClass", 1, "NIPS 2017 dev_dataset.csv (labels 1..1000)"
    ),
    _CsvLayout("labels.csv", "filename", "label", "targeted_label", 0, "TransferAttack labels.csv (labels 0..999)"),
)


@dataclass(frozen=True)
class _Listing:
    root: Path
    layout: _CsvLayout
    rows: tuple[dict[str, str], ...]  # sorted by image name


def load_imagenet_compatible(data_dir: str | os.PathLike[str] | None = None, size: int = 224) -> ImageSet:
    """Load the ImageNet-compatible set as uint8 (N, 3, size, size) images with 0-based ImageNet-1k labels.

    Args:
        data_dir: the directory with the label CSV and the images (see the module docstring); when None,
            ``$TRANSFERBENCH_IMAGENET_COMPATIBLE_DIR``.
        size: side of the square output; the whole picture is resized (shorter side to ``size``, center crop).

    Raises:
        FileNotFoundError: no directory given, or it lacks the CSV or an image the CSV lists.
        ValueError: malformed CSV (missing column, non-integer or out-of-range label, duplicate name), bad size.
    """
    prep = Preparation(size, crop_fraction=1.0)
    start = time.perf_counter()
    listing = _compatible_listing(data_dir)
    layout = listing.layout
    entries = [
        Entry(row[layout.name], _label(row, layout.label, layout, i), _compatible_file(listing, row[layout.name]))
        for i, row in enumerate(listing.rows)
    ]
    pixels = decode_entries(entries, prep)
    source = f"ImageNet-compatible set {listing.root} ({layout.description})"
    imageset = make_imageset(pixels, [e.label for e in entries], range(len(entries)), imagenet_class_names(), source)
    logger.info(
        "loaded %d ImageNet-compatible images from %s in %.1f s", len(entries), source, time.perf_counter() - start
    )
    return imageset


def imagenet_compatible_target_labels(data_dir: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """The competition's target classes (0-based ImageNet-1k indices), int64 (N,), in the id order of
    :func:`load_imagenet_compatible`. Reads only the CSV."""
    listing = _compatible_listing(data_dir)
    layout = listing.layout
    if listing.rows and layout.target not in listing.rows[0]:
        raise ValueError(
            f"{listing.root / layout.file} has no {layout.target!r} column, so the set carries no target classes; "
            "use a label file with that column or a target-label rule of the protocol"
        )
    return torch.tensor(
        [_label(row, layout.target, layout, i) for i, row in enumerate(listing.rows)], dtype=torch.int64
    )


def _compatible_listing(data_dir: str | os.PathLike[str] | None) -> _Listing:
    if data_dir is None:
        data_dir = os.environ.get(IMAGENET_COMPATIBLE_DIR_ENV) or None
    if data_dir is None:
        raise FileNotFoundError(f"the ImageNet-compatible set has no download source; {_COMPATIBLE_HELP}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(f"ImageNet-compatible directory {root} {what}; {_COMPATIBLE_HELP}")
    layout = next((lay for lay in _LAYOUTS if (root / lay.file).is_file()), None)
    if layout is None:
        raise FileNotFoundError(f"ImageNet-compatible directory {root} holds no label CSV; {_COMPATIBLE_HELP}")
    path = root / layout.file
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (layout.name, layout.label) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing} (has {reader.fieldnames}); {_COMPATIBLE_HELP}")
        rows = [{key: (value or "").strip() for key, value in row.items() if key} for row in reader]
    if not rows:
        raise ValueError(f"{path} lists no images; {_COMPATIBLE_HELP}")
    names = [row[layout.name] for row in rows]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{path} lists the image {duplicate!r} more than once; each image must appear once")
    return _Listing(root, layout, tuple(sorted(rows, key=lambda row: row[layout.name])))


def _label(row: dict[str, str], column: str, layout: _CsvLayout, position: int) -> int:
    """A 0-based ImageNet-1k index from a CSV cell, checked against the layout's numbering."""
    value = row.get(column, "")
    low, high = layout.offset, IMAGENET_NUM_CLASSES - 1 + layout.offset
    try:
        label = int(value)
    except ValueError:
        label = None
    if label is None or not low <= label <= high:
        raise ValueError(
            f"{layout.file}, image {row.get(layout.name)!r}: {column} = {value!r} is not an integer in {low}..{high} "
            f"({layout.description}); fix the file or use the layout that matches its numbering"
        )
    return label - layout.offset


def _compatible_file(listing: _Listing, name: str) -> Path:
    """The image file for a CSV name: exact name, or ``<name>.png/.jpg/.jpeg``, in ``images/`` or the root."""
    candidates = (
        [name] if Path(name).suffix.lower() in IMAGE_SUFFIXES else [name + s for s in (".png", ".jpg", ".jpeg")]
    )
    for folder in (listing.root / "images", listing.root):
        for candidate in candidates:
            if (folder / candidate).is_file():
                return folder / candidate
    raise FileNotFoundError(
        f"ImageNet-compatible image {name!r} listed in {listing.root / listing.layout.file} is not in "
        f"{listing.root / 'images'} or {listing.root} (looked for {candidates}); complete the download"
    )
