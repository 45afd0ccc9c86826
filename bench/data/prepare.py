"""Shared parts of the ImageNet-sized loaders (ImageNette, ImageNet val, the ImageNet-compatible set).

* **Preparation**: every image becomes a fixed uint8 (3, size, size) tensor by one rule, applied once when
  the data is loaded, so that every surrogate and target sees the same pixels and the content hash
  (:meth:`ImageSet.content_sha256`) identifies them. :class:`Preparation` holds the rule:
  decode; convert to RGB (grey-scale, palette, CMYK and alpha images included; alpha is dropped);
  resize so that the shorter side is ``floor(size / crop_fraction)`` pixels with PIL bilinear filtering
  (PIL widens the filter when shrinking, i.e. it antialiases), the longer side ``int(shorter * long / short)``;
  center crop ``size`` x ``size`` with offsets ``int(round((side - size) / 2))``. With ``crop_fraction = 0.875``
  this is the usual ImageNet evaluation transform (resize 256, center crop 224; the sizes and rounding are
  those of torchvision's ``Resize(int)`` + ``CenterCrop``, so both give the same pixels on PIL images).
* **Entries**: an image is listed as an :class:`Entry` (its stored name, label and where its bytes are)
  before anything is decoded, so the loaders can order and select images (ids) cheaply, then decode only
  the ones they return. Bytes come from a file, or from rows of a parquet file or an Arrow table
  (columns ``image`` = struct {bytes, path}, ``label``: the Hugging Face layout).

Pixel values depend on the JPEG decoder (libjpeg-turbo versions can differ in the last bit) and on
Pillow's resampling code; the content hash in a record is therefore the evidence of which pixels were used.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from bench.data.imageset import ImageSet
from bench.paths import env_flag

logger = logging.getLogger(__name__)

IMAGENET_CROP_FRACTION = 0.875  # 224 / 256: the standard ImageNet evaluation crop
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
WNID_PATTERN = re.compile(r"n\d{8}")
_WNID_SUFFIX = re.compile(r"_(n\d{8})$")  # Hub ImageNet file names: ILSVRC2012_val_00000001_n01751748.JPEG
_IMAGE_COLUMNS = ("image", "img")


# ----------------------------------------------------------------------------------------------------------------------
# Preparation
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preparation:
    """Resize the shorter side to ``floor(size / crop_fraction)``, then center crop ``size`` x ``size``."""

    size: int
    crop_fraction: float = IMAGENET_CROP_FRACTION

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 8 <= self.size <= 1024:
            raise ValueError(
                f"image size must be an int in [8, 1024] (224 for most ImageNet models), got {self.size!r}"
            )
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(
                f"crop_fraction must be in (0, 1] (0.875 for ImageNet evaluation), got {self.crop_fraction}"
            )

    @property
    def resize_to(self) -> int:
        """Length of the shorter side after resizing (256 for size 224 at crop fraction 0.875)."""
        return math.floor(self.size / self.crop_fraction)

    def describe(self) -> str:
        """The rule in words, for protocols and records."""
        return (
            f"decode; convert to RGB; resize the shorter side to {self.resize_to} px "
            f"(floor({self.size} / {self.crop_fraction})) with PIL bilinear, "
            f"longer side int({self.resize_to} * long / short); "
            f"center crop {self.size}x{self.size} at offsets int(round((side - {self.size}) / 2)); uint8 CHW"
        )


# Pillow modes of more than 8 bits per channel; ``convert("RGB")`` clips them to 255 instead of rescaling.
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def prepare_image(source: bytes | Path, prep: Preparation, where: str) -> np.ndarray:
    """Decode one image and apply ``prep``: uint8 (3, size, size). ``where`` names the image in errors."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            mode = image.mode
            # grey-scale, palette, CMYK, RGBA -> RGB; 16-bit and float pixels are refused below
            rgb = None if mode in _WIDE_MODES else image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(
            f"image {where} cannot be decoded ({type(exc).__name__}: {exc}); the bytes are corrupt or not an image "
            "format Pillow reads: re-create the mirror or remove the file"
        ) from exc
    if rgb is None:
        raise ValueError(
            f"image {where} has {mode!r} pixels (16-bit or float): converting them to 8-bit RGB would clip every "
            "value above 255 and turn the image white. Store the mirror's images as 8-bit (the official data sets are)"
        )
    width, height = rgb.size
    short = prep.resize_to
    new = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    if new != (width, height):
        rgb = rgb.resize(new, resample=Image.Resampling.BILINEAR)
    left = round((new[0] - prep.size) / 2)  # Python rounds halves to even, as torchvision does
    top = round((new[1] - prep.size) / 2)
    cropped = rgb.crop((left, top, left + prep.size, top + prep.size))
    return np.array(cropped, dtype=np.uint8).transpose(2, 0, 1)  # a writable copy for torch.from_numpy


# ----------------------------------------------------------------------------------------------------------------------
# Entries: images listed before they are decoded
# ----------------------------------------------------------------------------------------------------------------------


class RowSource:
    """Encoded image bytes stored in rows of a parquet file or an in-memory Arrow table."""

    def __init__(self, where: str, path: Path | None = None, table: pa.Table | None = None) -> None:
        self.where, self.path, self.table = where, path, table

    def read(self, rows: Sequence[int]) -> list[bytes | None]:
        """The ``bytes`` of the image struct at ``rows`` (reads only the parquet row groups that hold them)."""
        if self.table is not None:
            column = self.table.column(image_column_name(self.table.schema, self.where))
            return pc.struct_field(column.take(pa.array(rows, pa.int64())), "bytes").to_pylist()
        assert self.path is not None
        parquet = pq.ParquetFile(self.path)
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
        starts = np.cumsum([0, *sizes])
        group_of = [int(np.searchsorted(starts, row, side="right")) - 1 for row in rows]
        groups = sorted(set(group_of))
        base = dict(zip(groups, np.cumsum([0] + [sizes[g] for g in groups[:-1]]).tolist(), strict=True))
        local = [base[g] + row - int(starts[g]) for row, g in zip(rows, group_of, strict=True)]
        name = image_column_name(parquet.schema_arrow, self.where)
        column = parquet.read_row_groups(groups, columns=[name]).column(name)
        return pc.struct_field(column.take(pa.array(local, pa.int64())), "bytes").to_pylist()


@dataclass(frozen=True)
class Entry:
    """One image before decoding: its stored name (file path or ``image.path``), label and location."""

    name: str
    label: int
    origin: Path | tuple[RowSource, int]

    def describe(self) -> str:
        if isinstance(self.origin, Path):
            return str(self.origin)
        source, row = self.origin
        return f"{source.where} row {row} ({self.name or 'no image.path'})"


def decode_entries(entries: Sequence[Entry], prep: Preparation) -> torch.Tensor:
    """Decode and prepare ``entries`` in order: uint8 (N, 3, size, size). Parquet rows are read per source."""
    payloads: dict[int, bytes | Path] = {}
    by_source: dict[int, list[int]] = defaultdict(list)
    sources: dict[int, RowSource] = {}
    for i, entry in enumerate(entries):
        if isinstance(entry.origin, Path):
            payloads[i] = entry.origin
        else:
            sources[id(entry.origin[0])] = entry.origin[0]
            by_source[id(entry.origin[0])].append(i)
    for key, indices in by_source.items():
        data = sources[key].read([entries[i].origin[1] for i in indices])  # type: ignore[index]
        for i, payload in zip(indices, data, strict=True):
            if payload is None:
                raise ValueError(f"image {entries[i].describe()}: image.bytes is null; every row needs encoded bytes")
            payloads[i] = payload
    out = torch.empty((len(entries), 3, prep.size, prep.size), dtype=torch.uint8)

    def fill(i: int) -> None:
        out[i] = torch.from_numpy(prepare_image(payloads[i], prep, entries[i].describe()))

    # Pillow releases the GIL while decoding and resizing; each image is independent, so threads give the same
    # pixels as a plain loop, faster. list() re-raises the first error.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(fill, range(len(entries))))
    return out


def make_imageset(
    pixels: torch.Tensor, labels: Sequence[int], ids: Sequence[int], class_names: tuple[str, ...], source: str
) -> ImageSet:
    return ImageSet(
        pixels=pixels,
        labels=torch.as_tensor(list(labels), dtype=torch.int64),
        ids=torch.as_tensor(list(ids), dtype=torch.int64),
        max_value=255,
        class_names=class_names,
        source=source,
    )


def wnid_in_name(name: str) -> str | None:
    """The WordNet id a stored name carries: its parent folder (``val/n01440764/x.JPEG``) or a ``_n########``
    suffix of the file stem (``ILSVRC2012_val_00000001_n01751748.JPEG``); None when it carries neither."""
    path = PurePosixPath(name.replace("\\", "/"))
    if WNID_PATTERN.fullmatch(path.parent.name):
        return path.parent.name
    match = _WNID_SUFFIX.search(path.stem)
    return match.group(1) if match else None


def check_wnid(entry: Entry, wnids: Sequence[str], what: str) -> str:
    """The entry's wnid from its label; a different wnid in its stored name is an error."""
    expected = wnids[entry.label]
    found = wnid_in_name(entry.name)
    if found is not None and found != expected:
        raise ValueError(
            f"{what} image {entry.describe()}: label {entry.label} means {expected} but the stored name says {found}; "
            "the label column and the file names disagree: re-create the mirror"
        )
    return expected


# ----------------------------------------------------------------------------------------------------------------------
# Folders and parquet
# ----------------------------------------------------------------------------------------------------------------------


def image_files(folder: Path) -> list[Path]:
    """Image files (``.jpeg/.jpg/.png``, any case) directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(folder: Path, known: Sequence[str], what: str) -> list[tuple[int, Path]]:
    """``(label, folder / wnid)`` for each wnid sub-folder; a sub-folder that is not a known wnid is an error."""
    index = {wnid: label for label, wnid in enumerate(known)}
    found = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in found if p.name not in index]
    if unknown:
        raise ValueError(
            f"{what} image folder {folder} has sub-folders {unknown[:5]} ({len(unknown)} in all) that are not "
            f"{what} WordNet ids; use one folder per class named by its wnid, e.g. {known[0]}/"
        )
    return [(index[p.name], p) for p in found]


def find_parquet(root: Path, split: str) -> list[Path]:
    """Parquet files of ``split`` under ``root``, first layout found wins: ``<split>.parquet``;
    ``<split>/*.parquet`` (one configuration of a Hub parquet export); Hub shards ``**/<split>-*.parquet``."""
    single = root / f"{split}.parquet"
    if single.is_file():
        return [single]
    folder = root / split
    if folder.is_dir():
        files = sorted(p for p in folder.glob("*.parquet") if p.is_file())
        if files:
            return files
    return sorted((p for p in root.rglob(f"{split}-*.parquet") if p.is_file()), key=lambda p: p.as_posix())


def image_column_name(schema: pa.Schema, where: str) -> str:
    """Name of the image column (``image`` or ``img``: struct with binary ``bytes``); error if none fits."""
    for name in _IMAGE_COLUMNS:
        index = schema.get_field_index(name)
        if index < 0:
            continue
        kind = schema.field(index).type
        payload = kind.field("bytes").type if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0 else None
        if payload is not None and (pa.types.is_binary(payload) or pa.types.is_large_binary(payload)):
            return name
    raise ValueError(
        f"{where} has columns {schema.names}; expected the Hugging Face layout image: struct<bytes: binary, "
        "path: string> and label: int64"
    )


def entries_from_table(table: pa.Table, image: str, source: RowSource, num_classes: int) -> list[Entry]:
    """Entries for every row of ``table``: its ``label`` column and the ``path`` field of its ``image`` column."""
    where = source.where
    if "label" not in table.column_names or not pa.types.is_integer(table.schema.field("label").type):
        raise ValueError(
            f"{where} has no integer column 'label' (columns {table.column_names}); expected image + label"
        )
    labels = table.column("label").to_pylist()
    has_path = image in table.column_names and table.schema.field(image).type.get_field_index("path") >= 0
    paths = pc.struct_field(table.column(image), "path").to_pylist() if has_path else [None] * len(labels)
    entries = []
    for row, (label, name) in enumerate(zip(labels, paths, strict=True)):
        if label is None or not 0 <= label < num_classes:
            raise ValueError(f"{where} row {row}: label {label} is not a class index 0..{num_classes - 1}")
        entries.append(Entry(name or "", int(label), (source, row)))
    return entries


def entries_from_parquet(files: Sequence[Path], num_classes: int) -> list[Entry]:
    """Entries of parquet files in the Hugging Face layout, reading only ``image.path`` and ``label``."""
    entries: list[Entry] = []
    for path in files:
        source = RowSource(f"parquet file {path}", path=path)
        try:
            parquet = pq.ParquetFile(path)
            image = image_column_name(parquet.schema_arrow, source.where)
            has_path = parquet.schema_arrow.field(image).type.get_field_index("path") >= 0
            columns = [f"{image}.path"] if has_path else []
            columns += ["label"] if "label" in parquet.schema_arrow.names else []
            table = parquet.read(columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"cannot read parquet file {path}: {exc}; re-download or re-create it") from exc
        entries += entries_from_table(table, image, source, num_classes)
    return entries


def entries_from_hub_table(table: pa.Table, where: str, num_classes: int) -> list[Entry]:
    """Entries of an Arrow table returned by ``datasets`` (the image struct column holds the paths)."""
    return entries_from_table(table, image_column_name(table.schema, where), RowSource(where, table=table), num_classes)


# ----------------------------------------------------------------------------------------------------------------------
# Hub access
# ----------------------------------------------------------------------------------------------------------------------


def load_hub_table(hub_id: str, revision: str, data_files: str, split: str, what: str, help_text: str) -> pa.Table:
    """One split of a Hub dataset through ``datasets``, as an Arrow table (memory-mapped from its cache).

    ``data_files`` names the split's files explicitly so that only they are downloaded and prepared.
    With ``TRANSFERBENCH_OFFLINE`` set (and the Hugging Face offline variables unset) the Hub is not
    contacted at all; with ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` ``datasets`` reads only its cache.
    """
    where = f"Hugging Face Hub {hub_id}@{revision} ({data_files})"
    hf_offline = any(env_flag(v) for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if env_flag("TRANSFERBENCH_OFFLINE") and not hf_offline:
        raise RuntimeError(f"{what}: TRANSFERBENCH_OFFLINE is set, so the {where} is not contacted; {help_text}")
    try:
        import datasets
    except ImportError as exc:
        raise RuntimeError(f"{what}: loading from the {where} needs the `datasets` package; {help_text}") from exc
    try:
        dataset = datasets.load_dataset(hub_id, revision=revision, data_files={split: data_files}, split=split)
    except Exception as exc:  # datasets raises many types (network, auth, missing revision); all are reported
        hint = " (offline mode is on and the files are not in the datasets cache)" if hf_offline else ""
        raise RuntimeError(
            f"{what}: could not load {split!r} from the {where}{hint}: {type(exc).__name__}: {exc}. "
            f"Without Hub access, {help_text}"
        ) from exc
    return dataset.with_format("arrow")[:]
