"""CIFAR-10 from a local mirror or from a pinned revision on the Hugging Face Hub.

Where the data comes from, first match wins:

1. the ``data_dir`` argument (the CLI's ``--data-dir``);
2. the environment variable ``TRANSFERBENCH_CIFAR10_DIR``;
3. the Hugging Face Hub dataset ``uoft-cs/cifar10`` at the pinned :data:`CIFAR10_HUB_REVISION`, via
   ``datasets.load_dataset`` on the requested split's parquet files only (``plain_text/<split>-*.parquet``).
   ``TRANSFERBENCH_OFFLINE`` refuses this step (the Hub is not contacted); with ``HF_DATASETS_OFFLINE`` /
   ``HF_HUB_OFFLINE`` ``datasets`` reads only its cache. The same rule as the ImageNet-sized loaders
   (:func:`bench.data.prepare.load_hub_table`).

A local mirror is a directory in one of two layouts, looked up in this order:

* **parquet** in the Hub layout (columns ``img`` = struct {bytes, path} and ``label`` = int): either
  the file ``<dir>/<split>.parquet``, or Hub-style shards ``<dir>/**/<split>-*.parquet`` read in
  sorted path order (``plain_text/test-00000-of-00001.parquet`` as downloaded from the Hub);
* **image folder** ``<dir>/<split>/<class_name>/*.{png,jpg,jpeg}`` with one folder per name in
  :data:`CIFAR10_CLASSES`. Images are ordered by class index, then by file name in natural order
  (runs of digits compare as numbers, so ``9.png`` < ``10.png``; ties broken by the plain name).

Either way an image's id is its row position in the split in that order. Every image must decode to
a 32x32 picture; it is converted to RGB and stored as uint8 (3, 32, 32).
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from bench.data.imageset import ImageSet
from bench.data.prepare import load_hub_table

logger = logging.getLogger(__name__)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_HUB_ID = "uoft-cs/cifar10"
# Commit of https://huggingface.co/datasets/uoft-cs/cifar10 (the parquet conversion with columns
# img/label), pinned so that a Hub download is the same data on every machine and every day.
CIFAR10_HUB_REVISION = "0b2714987fa478483af9968de7c934580d0bb9a2"
CIFAR10_SPLITS: tuple[str, ...] = ("train", "test")
CIFAR10_DIR_ENV = "TRANSFERBENCH_CIFAR10_DIR"
# The split's files in that revision (its README's data_files: plain_text/train-*, plain_text/test-*).
CIFAR10_HUB_FILES = "plain_text/{split}-*.parquet"

_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_MIRROR_HELP = (
    f"pass --data-dir (data_dir=...) or set {CIFAR10_DIR_ENV} to a local CIFAR-10 mirror: a directory holding "
    "<split>.parquet or Hub shards **/<split>-*.parquet (columns img={bytes, path}, label), "
    "or an image folder <split>/<class_name>/*.png|jpg"
)


def load_cifar10(split: str = "test", data_dir: str | os.PathLike[str] | None = None) -> ImageSet:
    """Load one CIFAR-10 split as uint8 (N, 3, 32, 32) images with labels and ids.

    Args:
        split: ``"train"`` or ``"test"``.
        data_dir: a local mirror directory (see the module docstring for the layouts). When None,
            ``$TRANSFERBENCH_CIFAR10_DIR`` is used if set, else the Hugging Face Hub.

    Raises:
        ValueError: unknown split, or a mirror whose content is malformed (the message names the
            file and row or image).
        FileNotFoundError: the mirror directory is missing or holds neither layout.
        RuntimeError: the Hub could not be reached (e.g. offline) and no mirror was given.
    """
    if split not in CIFAR10_SPLITS:
        raise ValueError(f"unknown CIFAR-10 split {split!r}; choose one of {list(CIFAR10_SPLITS)}")
    if data_dir is not None:
        origin = "data_dir argument (--data-dir)"
    elif os.environ.get(CIFAR10_DIR_ENV):
        data_dir, origin = os.environ[CIFAR10_DIR_ENV], f"environment variable {CIFAR10_DIR_ENV}"
    else:
        return _load_from_hub(split)
    return _load_from_mirror(Path(data_dir).expanduser(), split, origin)


# ----------------------------------------------------------------------------------------------------------------------
# Local mirrors
# ----------------------------------------------------------------------------------------------------------------------


def _load_from_mirror(root: Path, split: str, origin: str) -> ImageSet:
    """Find the split in a mirror directory, preferring parquet over an image folder."""
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(f"CIFAR-10 mirror {root} (from the {origin}) {what}; {_MIRROR_HELP}")
    single = root / f"{split}.parquet"
    if single.is_file():
        files = [single]
    else:
        files = sorted((p for p in root.rglob(f"{split}-*.parquet") if p.is_file()), key=lambda p: p.as_posix())
    folder = root / split
    if files:
        if folder.is_dir():
            logger.info("CIFAR-10 mirror %s has both parquet and an image folder for %r; using parquet", root, split)
        return _load_parquet(files, split, root)
    if folder.is_dir():
        return _load_image_folder(folder, split)
    raise FileNotFoundError(
        f"CIFAR-10 mirror {root} (from the {origin}) has no {split!r} split: looked for {single.name}, "
        f"**/{split}-*.parquet and the folder {split}/; {_MIRROR_HELP}"
    )


def _load_parquet(files: Sequence[Path], split: str, root: Path) -> ImageSet:
    """Decode parquet files in the Hub layout, concatenated in the given order."""
    start = time.perf_counter()
    tables = [_read_parquet(path) for path in files]
    n = sum(table.num_rows for table in tables)
    if n == 0:
        raise ValueError(f"CIFAR-10 parquet {', '.join(map(str, files))} holds no rows; re-create the mirror")
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    offset = 0
    for path, table in zip(files, tables, strict=True):
        rows = table.num_rows
        labels[offset : offset + rows] = _labels_from_arrow(table.column("label"), path)
        _decode_arrow_images(table.column("img"), out[offset : offset + rows], where=str(path))
        offset += rows
    if len(files) == 1:
        source = f"parquet mirror {files[0]}"
    else:
        shards = ", ".join(p.relative_to(root).as_posix() for p in files)
        source = f"parquet mirror {root} ({split} shards: {shards})"
    imageset = _make_imageset(out, labels, source)
    logger.info("loaded %d CIFAR-10 %s images from %s in %.2f s", n, split, source, time.perf_counter() - start)
    return imageset


def _read_parquet(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path, partitioning=None)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"cannot read CIFAR-10 parquet file {path}: {exc}; re-download or re-create it") from exc
    _check_columns(table, str(path))
    return table


def _check_columns(table: pa.Table, where: str) -> None:
    """Require the Hub columns: ``img`` struct with binary ``bytes``, integer ``label``."""
    names = table.column_names
    img_type = table.schema.field("img").type if "img" in names else None
    ok_img = (
        img_type is not None
        and pa.types.is_struct(img_type)
        and img_type.get_field_index("bytes") >= 0
        and (pa.types.is_binary(img_type.field("bytes").type) or pa.types.is_large_binary(img_type.field("bytes").type))
    )
    ok_label = "label" in names and pa.types.is_integer(table.schema.field("label").type)
    if not (ok_img and ok_label):
        raise ValueError(
            f"CIFAR-10 data {where} has columns {table.schema}; expected the Hugging Face layout "
            "img: struct<bytes: binary, path: string> and label: int64"
        )


def _labels_from_arrow(column: pa.ChunkedArray, path: Path | str) -> np.ndarray:
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"CIFAR-10 data {path} row {row}: label is null; every row needs a class index 0..9")
    labels = np.array(column.to_numpy(), dtype=np.int64)  # a writable copy: torch warns on read-only arrays
    bad = np.flatnonzero((labels < 0) | (labels >= len(CIFAR10_CLASSES)))
    if bad.size:
        row = int(bad[0])
        raise ValueError(
            f"CIFAR-10 data {path} row {row}: label {int(labels[row])} is not a class index 0..9 "
            f"({bad.size} bad rows); labels follow CIFAR10_CLASSES {CIFAR10_CLASSES}"
        )
    return labels


def _decode_arrow_images(column: pa.ChunkedArray, out: np.ndarray, where: str) -> None:
    """Decode the ``img`` struct column into ``out`` (rows, 32, 32, 3); errors name the row."""
    structs = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    payloads = structs.field("bytes")
    paths = structs.field("path").to_pylist() if structs.type.get_field_index("path") >= 0 else None
    for row, payload in enumerate(payloads.to_pylist()):
        label = f"{where} row {row}" + (f" ({paths[row]})" if paths and paths[row] else "")
        if payload is None:
            raise ValueError(f"CIFAR-10 data {label}: img.bytes is null; every row needs encoded image bytes")
        out[row] = _decode(io.BytesIO(payload), label)


def _load_image_folder(folder: Path, split: str) -> ImageSet:
    """Decode ``<folder>/<class_name>/*.{png,jpg,jpeg}`` in class order, then natural file-name order."""
    start = time.perf_counter()
    unknown = sorted(
        p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in CIFAR10_CLASSES
    )
    if unknown:
        raise ValueError(
            f"CIFAR-10 image folder {folder} has sub-folders {unknown} that are not class names; "
            f"use one folder per class named {list(CIFAR10_CLASSES)}"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(CIFAR10_CLASSES):
        class_dir = folder / name
        if not class_dir.is_dir():
            logger.warning("CIFAR-10 image folder %s has no %s/ sub-folder", folder, name)
            continue
        found = [p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
        found.sort(key=lambda p: (_natural_key(p.name), p.name))
        files.extend(found)
        labels.extend([label] * len(found))
    if not files:
        raise FileNotFoundError(
            f"CIFAR-10 image folder {folder} holds no .png/.jpg/.jpeg files under class sub-folders "
            f"{list(CIFAR10_CLASSES)}; {_MIRROR_HELP}"
        )
    out = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
    for row, path in enumerate(files):
        out[row] = _decode(path, f"{path} (row {row})")
    source = f"image-folder mirror {folder}"
    imageset = _make_imageset(out, np.asarray(labels, dtype=np.int64), source)
    seconds = time.perf_counter() - start
    logger.info("loaded %d CIFAR-10 %s images from %s in %.2f s", len(files), split, source, seconds)
    return imageset


def _natural_key(name: str) -> tuple[str | int, ...]:
    """Sort key where digit runs compare as numbers: ``9.png`` < ``10.png``."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name)))


# ----------------------------------------------------------------------------------------------------------------------
# Hugging Face Hub
# ----------------------------------------------------------------------------------------------------------------------


def _load_from_hub(split: str) -> ImageSet:
    """Load the split's parquet files from the pinned Hub revision through ``datasets`` (uses its local cache)."""
    files = CIFAR10_HUB_FILES.format(split=split)
    where = f"Hugging Face Hub {CIFAR10_HUB_ID}@{CIFAR10_HUB_REVISION}"
    start = time.perf_counter()
    table = load_hub_table(CIFAR10_HUB_ID, CIFAR10_HUB_REVISION, files, split, "CIFAR-10", _MIRROR_HELP)
    _check_columns(table, where)
    n = table.num_rows
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    labels = _labels_from_arrow(table.column("label"), where)
    _decode_arrow_images(table.column("img"), out, where=f"{where} split {split!r}")
    source = f"{where} (split {split})"
    imageset = _make_imageset(out, labels, source)
    logger.info("loaded %d CIFAR-10 %s images from %s in %.2f s", n, split, where, time.perf_counter() - start)
    return imageset


# ----------------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------------


def _decode(fp: io.BytesIO | Path, label: str) -> np.ndarray:
    """Decode one image to (32, 32, 3) uint8 RGB; ``label`` names it in errors."""
    try:
        with Image.open(fp) as image:
            size = image.size
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8) if size == (32, 32) else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(
            f"CIFAR-10 image {label} cannot be decoded ({type(exc).__name__}: {exc}); the bytes are corrupt or not "
            "PNG/JPEG: re-create the mirror"
        ) from exc
    if rgb is None:
        raise ValueError(
            f"CIFAR-10 image {label} is {size[0]}x{size[1]} pixels; every image must be 32x32 (3x32x32 RGB): "
            "fix or remove it"
        )
    return rgb


def _make_imageset(hwc: np.ndarray, labels: np.ndarray, source: str) -> ImageSet:
    pixels = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()
    return ImageSet(
        pixels=pixels,
        labels=torch.from_numpy(labels),
        ids=torch.arange(len(labels), dtype=torch.int64),
        max_value=255,
        class_names=CIFAR10_CLASSES,
        source=source,
    )
