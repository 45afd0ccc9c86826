"""Tests for the ImageNet-sized loaders: ImageNette, ImageNet validation images, the ImageNet-compatible set.

Tiny mirrors are built in tmp_path with PIL (odd sizes, grey-scale and CMYK JPEGs, PNG for exact hashes);
the Hub path runs against a monkeypatched ``datasets.load_dataset`` that returns an in-memory dataset, which
checks the pinned id/revision/files and our conversion, not the download.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvf

from bench.data import (
    IMAGENET_COMPATIBLE_DIR_ENV,
    IMAGENET_DIR_ENV,
    IMAGENET_HUB_ID,
    IMAGENET_HUB_REVISION,
    IMAGENETTE_CLASSES,
    IMAGENETTE_DIR_ENV,
    IMAGENETTE_HUB_ID,
    IMAGENETTE_HUB_REVISION,
    IMAGENETTE_TO_IMAGENET,
    IMAGENETTE_WNIDS,
    imagenet_class_names,
    imagenet_compatible_target_labels,
    imagenet_wnids,
    load_imagenet_compatible,
    load_imagenet_val,
    load_imagenette,
)
from bench.data.prepare import Preparation, prepare_image

IMG_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SIZE = 32  # small outputs keep the tests fast; the rule is the same at 224


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (IMAGENETTE_DIR_ENV, IMAGENET_DIR_ENV, IMAGENET_COMPATIBLE_DIR_ENV, "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def _noise(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _encode(image: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    picture = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def _write_parquet(path: Path, rows: list[tuple[bytes, str | None, int]], row_group_size: int | None = None) -> None:
    """Rows (bytes, image.path, label) in the Hugging Face layout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = pa.array([{"bytes": b, "path": p} for b, p, _ in rows], type=IMG_TYPE)
    table = pa.table({"image": images, "label": pa.array([y for _, _, y in rows], type=pa.int64())})
    pq.write_table(table, path, row_group_size=row_group_size)


# Each file: (wnid label, file name, width, height). Names are out of order on purpose.
NETTE_FILES = [
    (3, "n03000684_99.png", 37, 53),
    (0, "ILSVRC2012_val_00009111.png", 64, 41),
    (0, "ILSVRC2012_val_00000293.png", 50, 50),
    (9, "b.png", 33, 70),
    (9, "a.png", 90, 36),
    (3, "ILSVRC2012_val_00040000.png", 45, 45),
]
# (wnid, file name) order of the files above: the ids every source must agree on
NETTE_ORDER = [2, 1, 5, 0, 4, 3]


def _nette_payloads() -> list[bytes]:
    return [_encode(_noise(w, h, seed=i)) for i, (_, _, w, h) in enumerate(NETTE_FILES)]


def _nette_folder(root: Path, split_dir: str = "val") -> Path:
    for payload, (label, name, _, _) in zip(_nette_payloads(), NETTE_FILES, strict=True):
        folder = root / split_dir / IMAGENETTE_WNIDS[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(payload)
    return root


def _nette_rows(seed: int = 0) -> list[tuple[bytes, str | None, int]]:
    rows = [
        (payload, f"imagenette2-320/val/{IMAGENETTE_WNIDS[label]}/{name}", label)
        for payload, (label, name, _, _) in zip(_nette_payloads(), NETTE_FILES, strict=True)
    ]
    random.Random(seed).shuffle(rows)  # the Hub export's row order is the tar order: not the id order
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------------------------------


def test_imagenette_classes_match_imagenet_order() -> None:
    wnids, names = imagenet_wnids(), imagenet_class_names()
    assert len(wnids) == len(names) == 1000 and list(wnids) == sorted(wnids)
    assert list(IMAGENETTE_WNIDS) == sorted(IMAGENETTE_WNIDS)
    assert IMAGENETTE_TO_IMAGENET == (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)
    for k, index in enumerate(IMAGENETTE_TO_IMAGENET):
        assert wnids[index] == IMAGENETTE_WNIDS[k]
        assert names[index] == IMAGENETTE_CLASSES[k]


# ----------------------------------------------------------------------------------------------------------------------
# Preparation
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(480, 320), (320, 480)])
def test_preparation_centres_and_matches_torchvision(width: int, height: int) -> None:
    """Resize shorter side 256 + center crop 224, pixel for pixel as torchvision's Resize(256) + CenterCrop(224)."""
    image = _noise(width, height, seed=1) // 4  # dark noise
    cx, cy = width // 2, height // 2
    image[cy - 20 : cy + 20, cx - 20 : cx + 20] = 255  # a white square at the centre
    image[:, :40] = (0, 255, 0)  # a green band on the left, cropped away when the image is wide
    out = prepare_image(_encode(image), Preparation(224), "pattern")
    assert out.shape == (3, 224, 224) and out.dtype == np.uint8

    picture = Image.fromarray(image)
    reference = tvf.center_crop(tvf.resize(picture, 256, interpolation=InterpolationMode.BILINEAR), 224)
    np.testing.assert_array_equal(out, np.asarray(reference).transpose(2, 0, 1))

    white = np.argwhere(out.min(axis=0) > 200)
    assert np.allclose(white.mean(axis=0), (111.5, 111.5), atol=0.6)  # centred
    assert len(white) == pytest.approx((40 * 256 / 320) ** 2, rel=0.15)  # scaled by 256/320
    green = (out[1] > 200) & (out[0] < 60) & (out[2] < 60)
    assert green.any() == (width < height)  # a wide image loses its left 100 px (40 px band) to the crop


def test_preparation_size_and_full_frame() -> None:
    assert Preparation(224).resize_to == 256 and Preparation(299).resize_to == 341 and Preparation(48).resize_to == 54
    square = _noise(40, 40, seed=3)
    full = prepare_image(_encode(square), Preparation(24, crop_fraction=1.0), "square")
    expected = np.asarray(Image.fromarray(square).resize((24, 24), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(full, expected)
    for bad in (0, 7, 2000, True, 24.0):
        with pytest.raises(ValueError, match="image size"):
            Preparation(bad)  # type: ignore[arg-type]


def test_grey_and_cmyk_jpegs_become_rgb(tmp_path: Path) -> None:
    folder = tmp_path / "val" / IMAGENETTE_WNIDS[1]
    folder.mkdir(parents=True)
    Image.new("L", (50, 40), 200).save(folder / "grey.JPEG", format="JPEG", quality=95)
    Image.new("CMYK", (41, 60), (0, 255, 255, 0)).save(folder / "red.JPEG", format="JPEG", quality=95)
    data = load_imagenette(data_dir=tmp_path, size=SIZE)
    assert data.pixels.shape == (2, 3, SIZE, SIZE)
    cmyk, grey = data.pixels[1].int(), data.pixels[0].int()  # "grey.JPEG" < "red.JPEG"
    assert (grey - 200).abs().max() <= 2 and torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert (cmyk[0] - 255).abs().max() <= 6 and cmyk[1:].max() <= 6  # CMYK red -> RGB red


def test_16_bit_images_are_refused_not_clipped_to_white() -> None:
    """Pillow's convert("RGB") clips 16-bit values to 255: such a mirror would feed white images."""
    wide = Image.fromarray((np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 30).astype(np.uint16))
    buf = io.BytesIO()
    wide.save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    with pytest.raises(ValueError, match=r"image deep\.png has 'I.*16-bit or float.*8-bit"):
        prepare_image(buf.getvalue(), Preparation(24), "deep.png")


def test_resize_input_anti_aliases_only_when_it_shrinks() -> None:
    from bench.models.adapters import ResizeInput

    stripes = torch.zeros(1, 3, 36, 36)
    stripes[..., ::2] = 1.0  # the highest frequency: shrunk 3.6x without a low-pass filter it aliases
    small = ResizeInput(torch.nn.Identity(), (10, 10), "bilinear")(stripes)
    aliased = torch.nn.functional.interpolate(stripes, size=(10, 10), mode="bilinear", align_corners=False)
    assert aliased[..., 1:-1].std() > 0.25  # plain bilinear sampling: stripes of 0s and 1s survive (measured 0.30)
    assert small[..., 1:-1].std() < 0.02  # anti-aliased: the stripes average to grey (measured 0.008)
    # Enlarging: no anti-aliasing. (Bicubic tells: its anti-aliased form uses another kernel, a = -0.5 not -0.75.)
    big = ResizeInput(torch.nn.Identity(), (64, 64), "bicubic")(stripes)
    plain = torch.nn.functional.interpolate(stripes, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
    smoothed = torch.nn.functional.interpolate(stripes, size=(64, 64), mode="bicubic", antialias=True).clamp(0, 1)
    assert (big - plain).abs().max() < 1e-5 and (big - smoothed).abs().max() > 0.05


# ----------------------------------------------------------------------------------------------------------------------
# ImageNette
# ----------------------------------------------------------------------------------------------------------------------


def test_imagenette_folder_ids_labels_order(tmp_path: Path) -> None:
    data = load_imagenette(data_dir=_nette_folder(tmp_path), size=SIZE)
    assert data.pixels.shape == (6, 3, SIZE, SIZE) and data.class_names == IMAGENETTE_CLASSES
    assert data.ids.tolist() == list(range(6))
    assert data.labels.tolist() == [NETTE_FILES[i][0] for i in NETTE_ORDER]
    payloads = _nette_payloads()
    for row, i in enumerate(NETTE_ORDER):
        expected = prepare_image(payloads[i], Preparation(SIZE), NETTE_FILES[i][1])
        assert torch.equal(data.pixels[row], torch.from_numpy(expected))
    assert "image-folder mirror" in data.source


@pytest.mark.parametrize(
    "relative", ["validation.parquet", "320px/validation/0000.parquet", "data/validation-00000-of-00001.parquet"]
)
def test_imagenette_parquet_matches_folder(tmp_path: Path, relative: str) -> None:
    folder = load_imagenette(data_dir=_nette_folder(tmp_path / "folder"), size=SIZE)
    _write_parquet(tmp_path / "pq" / relative, _nette_rows(seed=5), row_group_size=4)
    parquet = load_imagenette(data_dir=tmp_path / "pq", size=SIZE)
    assert parquet.content_sha256() == folder.content_sha256()
    assert torch.equal(parquet.labels, folder.labels) and torch.equal(parquet.ids, folder.ids)
    assert "parquet mirror" in parquet.source


def test_imagenette_size_and_env_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IMAGENETTE_DIR_ENV, str(_nette_folder(tmp_path, split_dir="train")))
    data = load_imagenette("train", size=48)
    assert data.pixels.shape == (6, 3, 48, 48) and str(tmp_path) in data.source
    with pytest.raises(ValueError, match="unknown ImageNette split"):
        load_imagenette("val")


def test_imagenette_hub_uses_pinned_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, object]]] = []
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(IMAGENETTE_CLASSES))}
    )
    rows = _nette_rows(seed=2)
    fake = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": p} for b, p, _ in rows], "label": [y for _, _, y in rows]}, features=features
    )

    def fake_load_dataset(path: str, **kwargs: object) -> datasets.Dataset:
        calls.append((path, kwargs))
        return fake

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = load_imagenette(size=SIZE)
    assert calls == [
        (
            IMAGENETTE_HUB_ID,
            {
                "revision": IMAGENETTE_HUB_REVISION,
                "data_files": {"validation": "320px/validation/*.parquet"},
                "split": "validation",
            },
        )
    ]
    assert len(IMAGENETTE_HUB_REVISION) == 40 and IMAGENETTE_HUB_REVISION in hub.source
    assert hub.content_sha256() == load_imagenette(data_dir=_nette_folder(tmp_path), size=SIZE).content_sha256()


def test_imagenette_offline_without_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the Hub must not be contacted when TRANSFERBENCH_OFFLINE is set")

    monkeypatch.setattr(datasets, "load_dataset", must_not_run)
    monkeypatch.setenv("TRANSFERBENCH_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=IMAGENETTE_DIR_ENV) as info:
        load_imagenette(size=SIZE)
    assert "TRANSFERBENCH_OFFLINE" in str(info.value)

    def cache_miss(*args: object, **kwargs: object) -> None:
        raise ConnectionError("offline and not cached")

    monkeypatch.delenv("TRANSFERBENCH_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", cache_miss)
    with pytest.raises(RuntimeError, match="offline mode is on") as info:
        load_imagenette(size=SIZE)
    assert IMAGENETTE_DIR_ENV in str(info.value) and IMAGENETTE_HUB_REVISION in str(info.value)


def test_imagenette_mirror_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_imagenette(data_dir=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="found neither parquet files nor the folder val/"):
        load_imagenette(data_dir=tmp_path / "empty")
    (tmp_path / "unknown" / "val" / "n99999999").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"n99999999.*not ImageNette WordNet ids"):
        load_imagenette(data_dir=tmp_path / "unknown")
    (tmp_path / "nofiles" / "val" / IMAGENETTE_WNIDS[0]).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no"):
        load_imagenette(data_dir=tmp_path / "nofiles")
    corrupt = tmp_path / "corrupt" / "val" / IMAGENETTE_WNIDS[2]
    corrupt.mkdir(parents=True)
    (corrupt / "x.JPEG").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"x\.JPEG cannot be decoded"):
        load_imagenette(data_dir=tmp_path / "corrupt", size=SIZE)


def test_imagenette_parquet_errors(tmp_path: Path) -> None:
    pq.write_table(pa.table({"pixels": [1], "label": [0]}), tmp_path / "validation.parquet")
    with pytest.raises(ValueError, match="expected the Hugging Face layout"):
        load_imagenette(data_dir=tmp_path)
    payload = _nette_payloads()[0]
    cases = {
        "wrong_wnid": ([(payload, f"val/{IMAGENETTE_WNIDS[1]}/a.png", 0)], "label 0 means n01440764"),
        "no_path": ([(payload, None, 0)], "no stored file name"),
        "bad_label": ([(payload, "a.png", 10)], "label 10 is not a class index"),
        "duplicate": ([(payload, "x/a.png", 4), (payload, "y/a.png", 4)], "same wnid and file name"),
    }
    for name, (rows, message) in cases.items():
        _write_parquet(tmp_path / name / "validation.parquet", rows)
        with pytest.raises(ValueError, match=message):
            load_imagenette(data_dir=tmp_path / name, size=SIZE)
    _write_parquet(tmp_path / "nobytes" / "validation.parquet", [(None, "a.png", 0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"image\.bytes is null"):
        load_imagenette(data_dir=tmp_path / "nobytes", size=SIZE)


# ----------------------------------------------------------------------------------------------------------------------
# ImageNet validation images
# ----------------------------------------------------------------------------------------------------------------------

VAL_LABELS = {1: 0, 2: 999, 3: 1, 4: 0, 6: 999, 7: 1}  # ILSVRC2012 number -> class index (ids are number - 1)


def _val_payload(number: int) -> bytes:
    return _encode(_noise(30 + number, 41 - number, seed=100 + number))


def _val_folder(root: Path, flat: bool = False) -> Path:
    for number, label in VAL_LABELS.items():
        wnid = imagenet_wnids()[label]
        name = f"ILSVRC2012_val_{number:08d}" + (f"_{wnid}.png" if flat else ".JPEG")
        folder = root / "val" if flat else root / "val" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(_val_payload(number))
    return root


def _val_rows() -> list[tuple[bytes, str | None, int]]:
    wnids = imagenet_wnids()
    return [
        (_val_payload(n), f"ILSVRC2012_val_{n:08d}_{wnids[y]}.JPEG", y) for n, y in sorted(VAL_LABELS.items())[::-1]
    ]


def test_imagenet_val_folder_ids_in_given_order(tmp_path: Path) -> None:
    data = load_imagenet_val([5, 0, 2], data_dir=_val_folder(tmp_path), size=SIZE)
    assert data.ids.tolist() == [5, 0, 2] and data.labels.tolist() == [999, 0, 1]
    assert data.pixels.shape == (3, 3, SIZE, SIZE) and data.num_classes == 1000
    expected = prepare_image(_val_payload(6), Preparation(SIZE), "id 5")
    assert torch.equal(data.pixels[0], torch.from_numpy(expected))
    flat = load_imagenet_val([5, 0, 2], data_dir=_val_folder(tmp_path / "flat", flat=True), size=SIZE)
    assert flat.content_sha256() == data.content_sha256()


def test_imagenet_val_parquet_shards_match_folder(tmp_path: Path) -> None:
    rows = _val_rows()
    _write_parquet(tmp_path / "pq" / "data" / "validation-00000-of-00002.parquet", rows[:4], row_group_size=2)
    _write_parquet(tmp_path / "pq" / "data" / "validation-00001-of-00002.parquet", rows[4:], row_group_size=1)
    ids = [6, 2, 0, 3]
    parquet = load_imagenet_val(ids, data_dir=tmp_path / "pq", size=SIZE)
    folder = load_imagenet_val(ids, data_dir=_val_folder(tmp_path / "folder"), size=SIZE)
    assert parquet.content_sha256() == folder.content_sha256()


def test_imagenet_val_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[str, dict[str, object]]] = []
    rows = _val_rows()
    fake = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": p} for b, p, _ in rows], "label": [y for _, _, y in rows]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )

    def fake_load_dataset(path: str, **kwargs: object) -> datasets.Dataset:
        calls.append((path, kwargs))
        return fake

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = load_imagenet_val([3, 1], size=SIZE)
    assert calls == [
        (
            IMAGENET_HUB_ID,
            {
                "revision": IMAGENET_HUB_REVISION,
                "data_files": {"validation": "data/validation-*.parquet"},
                "split": "validation",
            },
        )
    ]
    assert hub.content_sha256() == load_imagenet_val([3, 1], data_dir=_val_folder(tmp_path), size=SIZE).content_sha256()

    def gated(*args: object, **kwargs: object) -> None:
        raise PermissionError("401 Client Error: gated dataset")

    monkeypatch.setattr(datasets, "load_dataset", gated)
    with pytest.raises(RuntimeError, match="HF_TOKEN") as info:
        load_imagenet_val([0])
    assert IMAGENET_DIR_ENV in str(info.value)


def test_imagenet_val_errors(tmp_path: Path) -> None:
    root = _val_folder(tmp_path / "ok")
    for ids, message in (([], "empty"), ([-1], "outside"), ([50_000], "outside"), ([1, 1], "duplicates")):
        with pytest.raises(ValueError, match=message):
            load_imagenet_val(ids, data_dir=root)
    with pytest.raises(FileNotFoundError, match=r"lacks 2 of the 3 .*ILSVRC2012_val_00000005"):
        load_imagenet_val([4, 0, 7], data_dir=root)
    with pytest.raises(FileNotFoundError, match="neither validation parquet files nor a val/ folder"):
        load_imagenet_val([0], data_dir=tmp_path / "ok" / "val")
    (tmp_path / "ok" / "val" / "n99999999").mkdir()
    with pytest.raises(ValueError, match="not ImageNet WordNet ids"):
        load_imagenet_val([0], data_dir=root)
    flat = tmp_path / "flat" / "val"
    flat.mkdir(parents=True)
    (flat / "ILSVRC2012_val_00000001.JPEG").write_bytes(_val_payload(1))
    with pytest.raises(ValueError, match="carries no known wnid"):
        load_imagenet_val([0], data_dir=tmp_path / "flat")
    _write_parquet(
        tmp_path / "pq" / "validation.parquet", [(_val_payload(1), "ILSVRC2012_val_00000001_n01440764.JPEG", 5)]
    )
    with pytest.raises(ValueError, match="label 5 means"):
        load_imagenet_val([0], data_dir=tmp_path / "pq")
    _write_parquet(tmp_path / "pq2" / "validation.parquet", [(_val_payload(1), "n01440764_10026.JPEG", 0)])
    with pytest.raises(ValueError, match="no ILSVRC2012_val"):
        load_imagenet_val([0], data_dir=tmp_path / "pq2")


# ----------------------------------------------------------------------------------------------------------------------
# The ImageNet-compatible set
# ----------------------------------------------------------------------------------------------------------------------

# (ImageId, TrueLabel, TargetClass) in the 1..1000 numbering; rows deliberately not in ImageId order
COMPATIBLE = [("e2f1a0b3c4d5e6f7", 1000, 1), ("0c7ac4a8c9dfa802", 306, 12), ("7a1b2c3d4e5f6a7b", 1, 1000)]


def _compatible_dir(root: Path, csv_name: str = "images.csv", image_dir: str = "images") -> Path:
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    lines = ["ImageId,URL,x1,y1,x2,y2,TrueLabel,TargetClass,OriginalLandingURL,License,Author,AuthorProfileURL"]
    for i, (image_id, true, target) in enumerate(COMPATIBLE):
        lines.append(f"{image_id},https://example.org/{i}.jpg,0,0,1,1,{true},{target},,,,")
        (root / image_dir / f"{image_id}.png").write_bytes(_encode(_noise(40, 40, seed=200 + i)))
    (root / csv_name).write_text("\n".join(lines) + "\n")
    return root


def test_compatible_labels_offset_and_order(tmp_path: Path) -> None:
    root = _compatible_dir(tmp_path)
    data = load_imagenet_compatible(root, size=24)
    order = sorted(range(3), key=lambda i: COMPATIBLE[i][0])
    assert data.ids.tolist() == [0, 1, 2] and data.pixels.shape == (3, 3, 24, 24)
    assert data.labels.tolist() == [COMPATIBLE[i][1] - 1 for i in order] == [305, 0, 999]
    assert imagenet_compatible_target_labels(root).tolist() == [COMPATIBLE[i][2] - 1 for i in order]
    square = _noise(40, 40, seed=200 + order[0])
    expected = np.asarray(Image.fromarray(square).resize((24, 24), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert torch.equal(data.pixels[0], torch.from_numpy(expected.copy()))  # the whole picture, no crop


def test_compatible_dev_dataset_csv_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _compatible_dir(tmp_path, csv_name="dev_dataset.csv", image_dir=".")
    monkeypatch.setenv(IMAGENET_COMPATIBLE_DIR_ENV, str(root))
    data = load_imagenet_compatible(size=24)
    assert data.labels.tolist() == [305, 0, 999] and "dev_dataset.csv" in data.source


def test_compatible_transferattack_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    rows = [("b.png", 0, 7), ("a.jpeg", 999, 3)]
    for i, (name, _, _) in enumerate(rows):
        Image.fromarray(_noise(30, 30, seed=i)).save(tmp_path / "images" / name)
    lines = ["filename,label,targeted_label"] + [f"{n},{y},{t}" for n, y, t in rows]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    data = load_imagenet_compatible(tmp_path, size=24)
    assert data.labels.tolist() == [999, 0] and imagenet_compatible_target_labels(tmp_path).tolist() == [3, 7]
    (tmp_path / "labels.csv").write_text("filename,label\nb.png,0\n")
    with pytest.raises(ValueError, match="no 'targeted_label' column"):
        imagenet_compatible_target_labels(tmp_path)


def test_compatible_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=IMAGENET_COMPATIBLE_DIR_ENV):
        load_imagenet_compatible()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_imagenet_compatible(tmp_path / "missing")
    (tmp_path / "nocsv").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no label CSV"):
        load_imagenet_compatible(tmp_path / "nocsv")
    root = _compatible_dir(tmp_path / "set")
    text = (root / "images.csv").read_text()
    for bad in ("0", "1001", "x"):
        (root / "images.csv").write_text(text.replace(",306,12,", f",{bad},12,"))
        with pytest.raises(ValueError, match=r"TrueLabel = .* not an integer in 1\.\.1000"):
            load_imagenet_compatible(root, size=24)
    (root / "images.csv").write_text(text)
    (root / "images" / "0c7ac4a8c9dfa802.png").unlink()
    with pytest.raises(FileNotFoundError, match="0c7ac4a8c9dfa802"):
        load_imagenet_compatible(root, size=24)
    (root / "images.csv").write_text("ImageId,Label\nabc,3\n")
    with pytest.raises(ValueError, match=r"lacks the columns \['TrueLabel'\]"):
        load_imagenet_compatible(root, size=24)
