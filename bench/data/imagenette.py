"""ImageNette (fast.ai's 10-class subset of ImageNet) from a local mirror or a pinned Hub revision.

Where the data comes from, first match wins:

1. the ``data_dir`` argument (the CLI's ``--data-dir``);
2. the environment variable ``TRANSFERBENCH_IMAGENETTE_DIR``;
3. the Hugging Face Hub: the parquet export (branch ``refs/convert/parquet``) of ``frgfm/imagenette``,
   configuration ``320px``, pinned to the commit :data:`IMAGENETTE_HUB_REVISION`, via ``datasets.load_dataset``
   with the split's files named explicitly (``320px/validation/*.parquet``).

A local mirror is a directory in one of these layouts, looked up in this order:

* **parquet** with columns ``image`` = struct {bytes, path} (``img`` is accepted too) and ``label`` = int in
  :data:`IMAGENETTE_WNIDS` order: ``<dir>/<split>.parquet``; ``<dir>/<split>/*.parquet`` or
  ``<dir>/320px/<split>/*.parquet`` (a download of the Hub parquet export); Hub shards ``<dir>/**/<split>-*.parquet``.
  ``image.path`` must hold the image's file name (the export stores ``imagenette2-320/val/<wnid>/<file>``);
* **image folder** as in fast.ai's ``imagenette2-320.tgz``: ``<dir>/val/<wnid>/*.JPEG`` (``train/`` for the
  training split), one folder per wnid of :data:`IMAGENETTE_WNIDS`, ``.jpeg/.jpg/.png`` files.

**Ids.** Every source gives the same order: images sorted by (wnid, file name), file names compared as plain
strings, and an image's id is its position in that order. A parquet mirror and a folder mirror of the same
files therefore give the same ids, and (for lossless files) the same content hash.

**Preparation** (:data:`IMAGENETTE_PREPARATION`): the standard ImageNet evaluation transform, resize the
shorter side to 256 and center crop 224 (for ``size`` s: shorter side ``floor(s / 0.875)``), PIL bilinear.
It is the transform under which torchvision's ImageNet accuracies are reported; timm models evaluated with
another crop fraction or bicubic resizing (ViT, DeiT, Swin, the Inceptions) score close to, not exactly, their
published accuracy. See :mod:`bench.data.prepare` for the exact arithmetic.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from bench.data.imageset import ImageSet
from bench.data.prepare import (
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
)

logger = logging.getLogger(__name__)

# Label order = sorted wnids: the class-folder order of fast.ai's archives and of the Hub export's label column.
IMAGENETTE_WNIDS: tuple[str, ...] = (
    "n01440764",
    "n02102040",
    "n02979186",
    "n03000684",
    "n03028079",
    "n03394916",
    "n03417042",
    "n03425413",
    "n03445777",
    "n03888257",
)
IMAGENETTE_CLASSES: tuple[str, ...] = (
    "tench",
    "English springer",
    "cassette player",
    "chain saw",
    "church",
    "French horn",
    "garbage truck",
    "gas pump",
    "golf ball",
    "parachute",
)
# Index of each class among the 1,000 ImageNet-1k classes (sorted-wnid order, as in timm.data.ImageNetInfo and
# torchvision's weights meta); tests check them against timm.
IMAGENETTE_TO_IMAGENET: tuple[int, ...] = (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)
IMAGENETTE_SPLITS: tuple[str, ...] = ("train", "validation")
IMAGENETTE_DIR_ENV = "TRANSFERBENCH_IMAGENETTE_DIR"
IMAGENETTE_HUB_ID = "frgfm/imagenette"
IMAGENETTE_HUB_CONFIG = "320px"  # images resized by fast.ai so that the shorter side is 320 px
# Commit of branch refs/convert/parquet of https://huggingface.co/datasets/frgfm/imagenette ("Delete old duckdb
# index files", 2024-03-07). The 320px parquet files in it were written on 2023-08-17 and not changed since;
# the branch is rewritten by the Hub's converter, so the commit (not the branch name) is pinned. The content
# hash of the loaded set is the final check.
IMAGENETTE_HUB_REVISION = "823b9fdada70ebfa6486d411b6d9f2cb96cb9117"
IMAGENETTE_PREPARATION = Preparation(224).describe()

_FOLDERS = {"train": "train", "validation": "val"}
_MIRROR_HELP = (
    f"pass --data-dir (data_dir=...) or set {IMAGENETTE_DIR_ENV} to a local ImageNette mirror: the fast.ai folder "
    "layout val/<wnid>/*.JPEG (from imagenette2-320.tgz, https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz),"
    " or parquet with columns image={bytes, path} and label (validation.parquet, validation/*.parquet, "
    "320px/validation/*.parquet or **/validation-*.parquet)"
)


def load_imagenette(
    split: str = "validation", data_dir: str | os.PathLike[str] | None = None, size: int = 224
) -> ImageSet:
    """Load one ImageNette split as uint8 (N, 3, size, size) images, labels 0..9 and ids.

    Args:
        split: ``"validation"`` (3,925 images in imagenette2) or ``"train"``.
        data_dir: a local mirror (see the module docstring). When None, ``$TRANSFERBENCH_IMAGENETTE_DIR``
            is used if set, else the Hugging Face Hub.
        size: side of the square output; the shorter side is first resized to ``floor(size / 0.875)``.

    Raises:
        ValueError: unknown split or bad size, or a mirror whose content is malformed (names the file/row).
        FileNotFoundError: the mirror directory is missing, holds neither layout, or the split is empty.
        RuntimeError: the Hub could not be used (offline, no network, no ``datasets``) and no mirror was given.
    """
    if split not in IMAGENETTE_SPLITS:
        raise ValueError(f"unknown ImageNette split {split!r}; choose one of {list(IMAGENETTE_SPLITS)}")
    prep = Preparation(size)
    start = time.perf_counter()
    if data_dir is None and os.environ.get(IMAGENETTE_DIR_ENV):
        data_dir, origin = os.environ[IMAGENETTE_DIR_ENV], f"environment variable {IMAGENETTE_DIR_ENV}"
    else:
        origin = "data_dir argument (--data-dir)"
    if data_dir is None:
        entries, source = _hub_entries(split)
    else:
        entries, source = _mirror_entries(Path(data_dir).expanduser(), split, origin)
    ordered, labels = _canonical_order(entries)
    pixels = decode_entries(ordered, prep)
    imageset = make_imageset(pixels, labels, range(len(ordered)), IMAGENETTE_CLASSES, source)
    logger.info(
        "loaded %d ImageNette %s images from %s in %.1f s", len(ordered), split, source, time.perf_counter() - start
    )
    return imageset


def _mirror_entries(root: Path, split: str, origin: str) -> tuple[list[Entry], str]:
    """List the split's images in a mirror, preferring parquet over an image folder."""
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(f"ImageNette mirror {root} (from the {origin}) {what}; {_MIRROR_HELP}")
    files = find_parquet(root, split) or find_parquet(root / IMAGENETTE_HUB_CONFIG, split)
    if files:
        shown = ", ".join(p.relative_to(root).as_posix() for p in files)
        return entries_from_parquet(files, len(IMAGENETTE_WNIDS)), f"parquet mirror {root} ({shown})"
    folder = root / _FOLDERS[split]
    if folder.is_dir():
        return _folder_entries(folder), f"image-folder mirror {folder}"
    raise FileNotFoundError(
        f"ImageNette mirror {root} (from the {origin}) has no {split!r} split: found neither parquet files nor the "
        f"folder {_FOLDERS[split]}/; {_MIRROR_HELP}"
    )


def _folder_entries(folder: Path) -> list[Entry]:
    entries = [
        Entry(f"{wnid_dir.name}/{path.name}", label, path)
        for label, wnid_dir in class_folders(folder, IMAGENETTE_WNIDS, "ImageNette")
        for path in image_files(wnid_dir)
    ]
    if not entries:
        raise FileNotFoundError(
            f"ImageNette image folder {folder} holds no .JPEG/.jpg/.png files under wnid sub-folders; {_MIRROR_HELP}"
        )
    return entries


def _hub_entries(split: str) -> tuple[list[Entry], str]:
    files = f"{IMAGENETTE_HUB_CONFIG}/{split}/*.parquet"
    table = load_hub_table(IMAGENETTE_HUB_ID, IMAGENETTE_HUB_REVISION, files, split, "ImageNette", _MIRROR_HELP)
    where = f"Hugging Face Hub {IMAGENETTE_HUB_ID}@{IMAGENETTE_HUB_REVISION} ({files})"
    return entries_from_hub_table(table, where, len(IMAGENETTE_WNIDS)), where


def _canonical_order(entries: Sequence[Entry]) -> tuple[list[Entry], list[int]]:
    """Sort by (wnid, file name); every image needs a file name and a label that agrees with its wnid."""
    if not entries:
        raise FileNotFoundError(f"the ImageNette split holds no images; {_MIRROR_HELP}")
    keyed = {}
    for entry in entries:
        if not entry.name:
            raise ValueError(
                f"ImageNette image {entry.describe()} has no stored file name (image.path is empty): ids are "
                "positions in (wnid, file name) order, so every row needs its file name; re-create the mirror"
            )
        key = (check_wnid(entry, IMAGENETTE_WNIDS, "ImageNette"), PurePosixPath(entry.name.replace("\\", "/")).name)
        if key in keyed:
            raise ValueError(
                f"ImageNette images {keyed[key].describe()} and {entry.describe()} have the same wnid and file name "
                f"{key}; a mirror must hold each image once"
            )
        keyed[key] = entry
    ordered = [keyed[key] for key in sorted(keyed)]
    return ordered, [entry.label for entry in ordered]
