"""Tests for bench.data: the ImageSet container, the CIFAR-10 mirror/Hub loader and the digits loader.

Everything except the ``slow`` test builds tiny mirrors in tmp_path: no network, CPU only, fast.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from bench.data import CIFAR10_CLASSES, ImageSet, load_cifar10, load_digits_smoke
from bench.data.cifar10 import CIFAR10_DIR_ENV, CIFAR10_HUB_ID, CIFAR10_HUB_REVISION

REAL_MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
IMG_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


# ----------------------------------------------------------------------------------------------------------------------
# Helpers that build tiny mirrors
# ----------------------------------------------------------------------------------------------------------------------


def _random_images(n: int, seed: int = 0, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """(n, H, W, 3) uint8 random pictures."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, size[1], size[0], 3), dtype=np.uint8)


def _encode(hwc: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(hwc, mode="RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def _labels(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % len(CIFAR10_CLASSES)


def _table(payloads: list[bytes | None], labels: np.ndarray, split: str = "test") -> pa.Table:
    rows = [
        {"bytes": b, "path": f"{split}/{CIFAR10_CLASSES[int(y) % 10]}/{i:04d}.png"}
        for i, (b, y) in enumerate(zip(payloads, labels, strict=True))
    ]
    return pa.table({"img": pa.array(rows, type=IMG_TYPE), "label": pa.array(labels, type=pa.int64())})


def _write_parquet(path: Path, hwc: np.ndarray, labels: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_table([_encode(im, fmt) for im in hwc], labels), path)


@pytest.fixture
def png_data() -> tuple[np.ndarray, np.ndarray]:
    """20 random 32x32 RGB images (HWC uint8) and labels 0..9, 0..9."""
    return _random_images(20), _labels(20)


@pytest.fixture(autouse=True)
def _no_env_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own TRANSFERBENCH_CIFAR10_DIR must not leak into these tests."""
    monkeypatch.delenv(CIFAR10_DIR_ENV, raising=False)


def _chw(hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(hwc).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------------------------------
# Parquet mirrors
# ----------------------------------------------------------------------------------------------------------------------


def test_parquet_single_file(tmp_path: Path, png_data: tuple[np.ndarray, np.ndarray]) -> None:
    hwc, labels = png_data
    _write_parquet(tmp_path / "test.parquet", hwc, labels)
    data = load_cifar10("test", tmp_path)
    assert len(data) == 20
    assert data.pixels.dtype == torch.uint8 and data.pixels.shape == (20, 3, 32, 32)
    assert data.pixels.is_contiguous()
    assert torch.equal(data.pixels, _chw(hwc))  # PNG is lossless: exact pixels, in row order
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels.tolist()
    assert data.ids.dtype == torch.int64 and data.ids.tolist() == list(range(20))
    assert data.class_names == CIFAR10_CLASSES and data.max_value == 255
    assert str(tmp_path / "test.parquet") in data.source
    images = data.images()
    assert images.dtype == torch.float32 and images.shape == (20, 3, 32, 32)
    assert torch.allclose(images, _chw(hwc).float() / 255)


def test_parquet_hub_shards_match_single_file(tmp_path: Path, png_data: tuple[np.ndarray, np.ndarray]) -> None:
    hwc, labels = png_data
    _write_parquet(tmp_path / "single" / "test.parquet", hwc, labels)
    shards = tmp_path / "hub"
    # Written out of order on purpose: shards are read in sorted path order.
    _write_parquet(shards / "plain_text" / "test-00001-of-00002.parquet", hwc[12:], labels[12:])
    _write_parquet(shards / "plain_text" / "test-00000-of-00002.parquet", hwc[:12], labels[:12])
    _write_parquet(shards / "plain_text" / "train-00000-of-00001.parquet", _random_images(3, seed=5), _labels(3))
    single = load_cifar10("test", tmp_path / "single")
    sharded = load_cifar10("test", shards)
    assert torch.equal(sharded.pixels, single.pixels)
    assert torch.equal(sharded.labels, single.labels)
    assert sharded.ids.tolist() == list(range(20))
    assert sharded.content_sha256() == single.content_sha256()
    assert "test-00000-of-00002" in sharded.source and "test-00001-of-00002" in sharded.source
    assert len(load_cifar10("train", shards)) == 3


def test_parquet_jpeg_rows_decode(tmp_path: Path, png_data: tuple[np.ndarray, np.ndarray]) -> None:
    hwc, labels = png_data
    _write_parquet(tmp_path / "train.parquet", hwc, labels, fmt="JPEG")
    data = load_cifar10("train", tmp_path)
    assert data.pixels.shape == (20, 3, 32, 32) and data.pixels.dtype == torch.uint8
    assert data.labels.tolist() == labels.tolist()


def test_grayscale_rows_become_rgb(tmp_path: Path) -> None:
    grey = np.random.default_rng(1).integers(0, 256, size=(32, 32), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buffer, format="PNG")
    pq.write_table(_table([buffer.getvalue()], np.array([3])), tmp_path / "test.parquet")
    data = load_cifar10("test", tmp_path)
    assert data.pixels.shape == (1, 3, 32, 32)
    assert all(torch.equal(data.pixels[0, c], torch.from_numpy(grey)) for c in range(3))


# ----------------------------------------------------------------------------------------------------------------------
# Image-folder mirrors
# ----------------------------------------------------------------------------------------------------------------------


def test_image_folder_order_and_content(tmp_path: Path) -> None:
    hwc = _random_images(6, seed=2)
    # (class, file name) in the expected load order: class index first, then natural file-name order.
    expected = [("airplane", "2.png"), ("airplane", "10.png"), ("cat", "img1.jpg"), ("cat", "img9.png")]
    expected += [("cat", "img10.png"), ("truck", "0001.jpeg")]
    written = [expected[i] for i in (5, 1, 0, 4, 3, 2)]  # creation order must not matter
    for name, file_name in written:
        folder = tmp_path / "test" / name
        folder.mkdir(parents=True, exist_ok=True)
        i = expected.index((name, file_name))
        fmt = "JPEG" if file_name.endswith((".jpg", ".jpeg")) else "PNG"
        (folder / file_name).write_bytes(_encode(hwc[i], fmt))
    (tmp_path / "test" / "cat" / "notes.txt").write_text("not an image")
    data = load_cifar10("test", tmp_path)
    assert len(data) == 6
    assert data.labels.tolist() == [CIFAR10_CLASSES.index(name) for name, _ in expected]
    assert data.ids.tolist() == list(range(6))
    for i, (_, file_name) in enumerate(expected):
        if file_name.endswith(".png"):
            assert torch.equal(data.pixels[i], _chw(hwc[i : i + 1])[0]), file_name
    assert str(tmp_path / "test") in data.source


def test_image_folder_unknown_class_folder(tmp_path: Path) -> None:
    (tmp_path / "test" / "cats").mkdir(parents=True)
    (tmp_path / "test" / "cats" / "0.png").write_bytes(_encode(_random_images(1)[0]))
    with pytest.raises(ValueError, match="cats"):
        load_cifar10("test", tmp_path)


def test_image_folder_wrong_size_names_file(tmp_path: Path) -> None:
    folder = tmp_path / "test" / "dog"
    folder.mkdir(parents=True)
    (folder / "0.png").write_bytes(_encode(_random_images(1)[0]))
    (folder / "1.png").write_bytes(_encode(_random_images(1, size=(32, 30))[0]))
    with pytest.raises(ValueError, match=r"1\.png.*32x30"):
        load_cifar10("test", tmp_path)


def test_parquet_preferred_over_image_folder(tmp_path: Path, png_data: tuple[np.ndarray, np.ndarray]) -> None:
    hwc, labels = png_data
    _write_parquet(tmp_path / "test.parquet", hwc, labels)
    (tmp_path / "test" / "dog").mkdir(parents=True)
    assert len(load_cifar10("test", tmp_path)) == 20


# ----------------------------------------------------------------------------------------------------------------------
# Content hash
# ----------------------------------------------------------------------------------------------------------------------


def test_content_sha256_stable_and_sensitive(tmp_path: Path, png_data: tuple[np.ndarray, np.ndarray]) -> None:
    hwc, labels = png_data
    _write_parquet(tmp_path / "test.parquet", hwc, labels)
    first, second = load_cifar10("test", tmp_path), load_cifar10("test", tmp_path)
    digest = first.content_sha256()
    assert len(digest) == 64 and digest == second.content_sha256() == first.content_sha256()

    pixels = first.pixels.clone()
    pixels[3, 1, 7, 9] ^= 1
    changed_pixel = ImageSet(pixels, first.labels, first.ids, 255, CIFAR10_CLASSES, first.source)
    labels_t = first.labels.clone()
    labels_t[5] = (labels_t[5] + 1) % 10
    changed_label = ImageSet(first.pixels, labels_t, first.ids, 255, CIFAR10_CLASSES, first.source)
    renamed = ImageSet(first.pixels, first.labels, first.ids, 255, CIFAR10_CLASSES, "somewhere else")
    assert changed_pixel.content_sha256() != digest
    assert changed_label.content_sha256() != digest
    assert renamed.content_sha256() == digest  # the source string is not content


def test_content_sha256_matches_documented_recipe() -> None:
    pixels = torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).reshape(2, 3, 2, 2)
    data = ImageSet(pixels, torch.tensor([1, 0]), torch.tensor([7, 3]), 255, ("a", "b"), "unit test")
    digest = hashlib.sha256()
    digest.update(b"ImageSet;shape=(2, 3, 2, 2);dtype=uint8;max_value=255;")
    digest.update(pixels.numpy().tobytes())
    digest.update(np.array([1, 0], dtype="<i8").tobytes() + np.array([7, 3], dtype="<i8").tobytes())
    assert data.content_sha256() == digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# ImageSet behaviour and validation
# ----------------------------------------------------------------------------------------------------------------------


def _small_set(n: int = 5) -> ImageSet:
    pixels = torch.from_numpy(_random_images(n, seed=3)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(pixels, torch.arange(n) % 3, torch.arange(100, 100 + n), 255, ("a", "b", "c"), "unit test")


def test_subset_keeps_ids_and_images_scale() -> None:
    data = _small_set()
    sub = data.subset([4, 1])
    assert sub.ids.tolist() == [104, 101] and sub.labels.tolist() == [1, 1]
    assert torch.equal(sub.pixels, data.pixels[[4, 1]])
    assert len(data.subset(torch.tensor([True, False, True, False, False]))) == 2
    assert len(data.subset(2)) == 1 and len(data.subset(slice(1, 4))) == 3
    assert torch.equal(data.images([4, 1]), sub.images())
    assert data.images(0).shape == (3, 32, 32)
    assert "n=5" in repr(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pixels": torch.zeros(2, 3, 4, 4)}, "uint8"),
        ({"pixels": torch.zeros(2, 4, 4, dtype=torch.uint8)}, r"\(N, C, H, W\)"),
        ({"labels": torch.tensor([0, 1], dtype=torch.int32)}, "labels must be a torch.int64"),
        ({"labels": torch.tensor([0, 1, 1])}, r"labels must have shape \(2,\)"),
        ({"ids": torch.tensor([0])}, r"ids must have shape \(2,\)"),
        ({"labels": torch.tensor([0, 3])}, r"labels\[1\] = 3"),
        ({"labels": torch.tensor([-1, 0])}, r"labels\[0\] = -1"),
        ({"max_value": 0}, "max_value"),
        ({"max_value": 3}, "above max_value=3"),
        ({"class_names": ["a", "b", "c"]}, "class_names"),
        ({"source": ""}, "source"),
    ],
)
def test_imageset_validation(change: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "pixels": torch.full((2, 3, 4, 4), 4, dtype=torch.uint8),
        "labels": torch.tensor([0, 2]),
        "ids": torch.tensor([0, 1]),
        "max_value": 255,
        "class_names": ("a", "b", "c"),
        "source": "unit test",
    }
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        ImageSet(**fields)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------------
# Where the data comes from
# ----------------------------------------------------------------------------------------------------------------------


def test_env_var_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, png_data: tuple[np.ndarray, np.ndarray]
) -> None:
    hwc, labels = png_data
    _write_parquet(tmp_path / "env" / "test.parquet", hwc, labels)
    _write_parquet(tmp_path / "arg" / "test.parquet", hwc[:4], labels[:4])
    monkeypatch.setenv(CIFAR10_DIR_ENV, str(tmp_path / "env"))
    assert len(load_cifar10("test")) == 20
    assert len(load_cifar10("test", data_dir=tmp_path / "arg")) == 4  # the argument wins over the variable


def test_env_var_missing_dir_names_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(CIFAR10_DIR_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=CIFAR10_DIR_ENV) as info:
        load_cifar10("test")
    assert str(missing) in str(info.value)


def test_hub_used_without_mirror(monkeypatch: pytest.MonkeyPatch, png_data: tuple[np.ndarray, np.ndarray]) -> None:
    datasets = pytest.importorskip("datasets")
    hwc, labels = png_data
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=list(CIFAR10_CLASSES))})
    fake = datasets.Dataset.from_dict(
        {"img": [{"bytes": _encode(im), "path": None} for im in hwc], "label": labels.tolist()}, features=features
    )
    calls = []

    def fake_load_dataset(path: str, **kwargs: object) -> object:
        calls.append((path, kwargs))
        return fake

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_cifar10("test")
    only_test = {"test": "plain_text/test-*.parquet"}  # the split's files only, not the whole dataset
    assert calls == [(CIFAR10_HUB_ID, {"revision": CIFAR10_HUB_REVISION, "data_files": only_test, "split": "test"})]
    assert torch.equal(data.pixels, _chw(hwc)) and data.labels.tolist() == labels.tolist()
    assert CIFAR10_HUB_ID in data.source and CIFAR10_HUB_REVISION in data.source


@pytest.mark.parametrize(
    ("var", "contacted", "named"),
    [
        ("HF_DATASETS_OFFLINE", True, "offline"),  # datasets is asked and answers from its cache only
        ("TRANSFERBENCH_OFFLINE", False, "TRANSFERBENCH_OFFLINE"),  # the Hub is not asked at all
    ],
)
def test_offline_hub_failure_says_how_to_use_a_mirror(
    monkeypatch: pytest.MonkeyPatch, var: str, contacted: bool, named: str
) -> None:
    datasets = pytest.importorskip("datasets")
    calls = []

    def offline(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise ConnectionError("Couldn't reach 'uoft-cs/cifar10' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setenv(var, "1")
    with pytest.raises(RuntimeError, match="--data-dir") as info:
        load_cifar10("test")
    message = str(info.value)
    assert CIFAR10_DIR_ENV in message and named in message and CIFAR10_HUB_REVISION in message
    assert bool(calls) is contacted


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------


def test_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10("test", missing)
    message = str(info.value)
    assert str(missing) in message and "--data-dir" in message and CIFAR10_DIR_ENV in message


def test_dir_with_neither_format(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match=r"no 'test' split") as info:
        load_cifar10("test", tmp_path)
    assert str(tmp_path) in str(info.value) and CIFAR10_DIR_ENV in str(info.value)


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'validation'.*\['train', 'test'\]"):
        load_cifar10("validation", tmp_path)


def test_corrupt_image_bytes_names_row(tmp_path: Path, png_data: tuple[np.ndarray, np.ndarray]) -> None:
    hwc, labels = png_data
    payloads: list[bytes | None] = [_encode(im) for im in hwc]
    payloads[7] = b"\x89PNG\r\n\x1a\n this is not really a png"
    path = tmp_path / "test.parquet"
    pq.write_table(_table(payloads, labels), path)
    with pytest.raises(ValueError, match=r"row 7\b") as info:
        load_cifar10("test", tmp_path)
    assert str(path) in str(info.value) and "0007.png" in str(info.value)


def test_truncated_image_bytes_names_row(tmp_path: Path, png_data: tuple[np.ndarray, np.ndarray]) -> None:
    hwc, labels = png_data
    payloads: list[bytes | None] = [_encode(im, "JPEG") for im in hwc]
    payloads[2] = payloads[2][: len(payloads[2]) // 2]
    pq.write_table(_table(payloads, labels), tmp_path / "test.parquet")
    with pytest.raises(ValueError, match=r"row 2\b"):
        load_cifar10("test", tmp_path)


def test_wrong_image_size_names_row(tmp_path: Path, png_data: tuple[np.ndarray, np.ndarray]) -> None:
    hwc, labels = png_data
    payloads: list[bytes | None] = [_encode(im) for im in hwc]
    payloads[11] = _encode(_random_images(1, size=(64, 64))[0])
    pq.write_table(_table(payloads, labels), tmp_path / "test.parquet")
    with pytest.raises(ValueError, match=r"row 11\b.*64x64"):
        load_cifar10("test", tmp_path)


def test_bad_label_names_row(tmp_path: Path, png_data: tuple[np.ndarray, np.ndarray]) -> None:
    hwc, labels = png_data
    labels = labels.copy()
    labels[4] = 10
    _write_parquet(tmp_path / "test.parquet", hwc, labels)
    with pytest.raises(ValueError, match=r"row 4\b.*label 10"):
        load_cifar10("test", tmp_path)


def test_wrong_columns(tmp_path: Path) -> None:
    pq.write_table(pa.table({"image": [b"x"], "label": [0]}), tmp_path / "test.parquet")
    with pytest.raises(ValueError, match=r"img: struct<bytes: binary, path: string>"):
        load_cifar10("test", tmp_path)


def test_unreadable_parquet(tmp_path: Path) -> None:
    (tmp_path / "test.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="cannot read CIFAR-10 parquet"):
        load_cifar10("test", tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# Digits
# ----------------------------------------------------------------------------------------------------------------------


def test_digits_smoke() -> None:
    data = load_digits_smoke()
    assert len(data) == 1797
    assert data.pixels.dtype == torch.uint8 and data.pixels.shape == (1797, 1, 8, 8)
    assert int(data.pixels.max()) == 16 and data.max_value == 16
    assert set(data.labels.tolist()) == set(range(10))
    assert data.class_names == tuple(str(d) for d in range(10))
    assert data.ids.tolist() == list(range(1797))
    images = data.images()
    assert images.dtype == torch.float32 and float(images.min()) == 0.0 and float(images.max()) == 1.0
    assert data.source.startswith("sklearn.datasets.load_digits (scikit-learn ")
    assert data.content_sha256() == load_digits_smoke().content_sha256()


# ----------------------------------------------------------------------------------------------------------------------
# The real mirror (slow; skipped where ../shared/data is absent)
# ----------------------------------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.slow
def test_real_mirror_test_split() -> None:
    if not (REAL_MIRROR / "test.parquet").is_file():
        pytest.skip(f"real CIFAR-10 mirror not found at {REAL_MIRROR}")
    sums = {}
    for line in (REAL_MIRROR / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            hex_digest, name = line.split(maxsplit=1)
            sums[name.strip().lstrip("*")] = hex_digest.lower()
    assert "test.parquet" in sums
    for name, hex_digest in sums.items():
        assert _sha256_file(REAL_MIRROR / name) == hex_digest, f"{name} does not match SHA256SUMS"

    data = load_cifar10("test", REAL_MIRROR)
    assert len(data) == 10_000
    assert data.pixels.shape == (10_000, 3, 32, 32) and data.pixels.dtype == torch.uint8
    assert torch.bincount(data.labels, minlength=10).tolist() == [1000] * 10
    assert data.ids.tolist() == list(range(10_000))
    assert str(REAL_MIRROR / "test.parquet") in data.source
