"""The ImageNette and ImageNet protocols end to end on local mirrors: tiny images, tiny timm models.

The protocols are the registered ones with only the sizes shrunk (image list, input size, subsets) and the
ImageNet zoo replaced by tiny random timm models served from a weights mirror in the layout of the real entries
(``<mirror>/<repo_id>/model.safetensors``). Data, targets, label-space restriction, native-size resizing, the
runner and the local store run exactly as they do for the real thing.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from bench.data.imagenette import IMAGENETTE_TO_IMAGENET, IMAGENETTE_WNIDS
from bench.data.prepare import Preparation
from bench.hashing import sha256_file
from bench.metrics.asr import unpack_bits
from bench.models import build_architecture, build_model
from bench.protocol import WeightSharpnessSpec, get_protocol
from bench.runner import evaluate, load_protocol_data, select_images
from leaderboard.store import LocalStore
from leaderboard.table import ranked_table
from surrogates import load_surrogate, save_surrogate
from targets import TARGETS, TargetSpec, load_targets
from targets.zoo import HubWeights

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = 32  # protocol input size for the test (224 in the real protocols)
TINY = {  # name: (timm architecture, native input size): the ViT needs its own 160 px, so it is resized to
    "tiny-in1k-resnet": ("test_resnet", 48),
    "tiny-in1k-vit": ("test_vit", 160),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def weights_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tiny 1,000-class timm models as zoo entries served by a weights mirror, registered for this module."""
    mirror = tmp_path_factory.mktemp("weights")
    specs = []
    for seed, (name, (arch, native)) in enumerate(TINY.items()):
        torch.manual_seed(seed)
        net = build_architecture(f"timm:{arch}", 1000)
        path = mirror / "tiny" / name / "model.safetensors"
        path.parent.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
        specs.append(TargetSpec(name=name, family="cnn" if "resnet" in arch else "vit", architecture=f"timm:{arch}",
                                num_classes=1000, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                source=HubWeights(f"tiny/{name}", sha256=sha256_file(path)),
                                input_size=(3, native, native), interpolation="bilinear"))  # fmt: skip
    for spec in specs:
        TARGETS.add(spec.name, spec)
    try:
        yield mirror
    finally:
        for spec in specs:
            TARGETS.remove(spec.name)


def _shrink(name: str, n_images: int) -> object:
    proto = get_protocol(name)
    crop = 1.0 if proto.dataset == "imagenet-compatible" else 0.875
    return dataclasses.replace(
        proto, image_ids=tuple(range(n_images)), input_size=(3, SIZE, SIZE), targets=tuple(TINY),
        image_preparation=Preparation(SIZE, crop_fraction=crop).describe(),
        smoothness_images=n_images, similarity_images=n_images, smoothness_iters=3,
        weight_sharpness=WeightSharpnessSpec(images=n_images, max_iters=3, tol=1e-3, probes=2),
    )  # fmt: skip


def _surrogate(tmp_path: Path, num_classes: int) -> Path:
    torch.manual_seed(7)
    model = build_model("timm:test_efficientnet", num_classes, IMAGENET_MEAN, IMAGENET_STD)
    return save_surrogate(model, tmp_path / f"sur-{num_classes}", architecture="timm:test_efficientnet",
                          num_classes=num_classes, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                          input_size=(3, SIZE, SIZE))  # fmt: skip


def _run(protocol, data_dir: Path, weights: Path, surrogate: Path, store: Path):  # type: ignore[no-untyped-def]
    data = load_protocol_data(protocol, str(data_dir))
    targets = load_targets(protocol.targets, weights_dir=weights, input_size=protocol.input_size)
    record = evaluate(load_surrogate(surrogate), protocol, data, targets, batch_size=8, progress=False)
    LocalStore(store).add(record)
    return record, select_images(protocol, data, None), targets


def test_imagenette_end_to_end_reads_imagenet_targets_on_the_ten_classes(tmp_path: Path, weights_mirror: Path) -> None:
    rng = np.random.default_rng(0)
    for wnid in IMAGENETTE_WNIDS:  # fast.ai's folder layout, two images per class of odd sizes
        folder = tmp_path / "imagenette" / "val" / wnid
        folder.mkdir(parents=True)
        for i in range(2):
            _image(rng, 40 + 7 * i, 61).save(folder / f"{wnid}_{i}.JPEG", quality=95)
    protocol = _shrink("imagenette", 20)
    surrogate = _surrogate(tmp_path, 1000)  # a 1,000-class surrogate is read on the same 10 columns
    record, images, targets = _run(protocol, tmp_path / "imagenette", weights_mirror, surrogate, tmp_path / "lb")

    assert tuple(images.pixels.shape[1:]) == (3, SIZE, SIZE) and record.data["sha256"] == images.content_sha256()
    assert set(record.targets) == set(TINY) and len(record.runs[0]["cells"]) == len(protocol.cells())
    x, y = images.images(), images.labels
    for name, tg in targets.items():  # restricted argmax over the ImageNette columns, recomputed by hand
        with torch.no_grad():
            expected = tg.model(x)[:, list(IMAGENETTE_TO_IMAGENET)].argmax(1) == y
        assert np.array_equal(unpack_bits(record.targets[name]["clean_correct"], 20), expected.numpy())
        assert record.targets[name]["sha256"] == TARGETS.get(name).source.sha256
    targeted = protocol.target_labels(images.ids, images.labels)
    assert (targeted < 10).all() and (targeted != y).all()  # targeted labels live in the protocol's 10 classes
    run = record.runs[0]
    assert run["weight_sharpness"]["n"] == 20 and np.isfinite(run["weight_sharpness"]["top_eigenvalue"])
    assert run["smoothness"]["n"] == 20
    table = ranked_table(LocalStore(tmp_path / "lb").records())
    assert len(table) == 1 and table.loc[0, "protocol"].startswith("imagenette-v1-")


def test_imagenet_compatible_end_to_end(tmp_path: Path, weights_mirror: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "nips17"
    (root / "images").mkdir(parents=True)
    ids = [f"{i:016x}" for i in range(12)]
    for image_id in ids:  # the Kaggle release: <ImageId>.png (299x299) and images.csv with 1..1000 labels
        _image(rng, 299, 299).save(root / "images" / f"{image_id}.png")
    protocol = _shrink("imagenet", 12)
    _write_labels(root, ids, [1 + (97 * i) % 1000 for i in range(12)])
    # Random 1,000-class models get nothing right, and ASR is defined over images a target classifies correctly:
    # label the images with what the tiny ResNet target predicts (in the 1001-class convention of the CSV).
    resnet = load_targets(["tiny-in1k-resnet"], weights_dir=weights_mirror, input_size=protocol.input_size)
    with torch.no_grad():
        preds = resnet["tiny-in1k-resnet"].model(load_protocol_data(protocol, str(root)).images()).argmax(1)
    _write_labels(root, ids, (preds + 1).tolist())
    record, images, _ = _run(protocol, root, weights_mirror, _surrogate(tmp_path, 1000), tmp_path / "lb")

    assert images.labels.tolist() == preds.tolist()  # 1001-class labels shifted to 0..999
    assert record.targets["tiny-in1k-resnet"]["clean_accuracy"] == 1.0
    assert record.protocol["name"] == "imagenet" and record.data["n_images"] == 12
    cell = record.runs[0]["cells"]["mifgsm/linf-16/untargeted"]
    surrogate_correct = unpack_bits(record.runs[0]["outcomes"]["clean_correct"], 12)
    assert set(cell["targets"]) == set(TINY) and cell["fooling_rate"]["n"] == int(surrogate_correct.sum())
    resnet_rates = cell["targets"]["tiny-in1k-resnet"]["target_correct"]
    assert resnet_rates["n"] == 12 and 0 <= resnet_rates["k"] <= 12  # every image is one the ResNet gets right


def _write_labels(root: Path, ids: list[str], labels: list[int]) -> None:
    with open(root / "images.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["ImageId", "TrueLabel", "TargetClass"])
        writer.writeheader()
        writer.writerows(
            {"ImageId": i, "TrueLabel": t, "TargetClass": 1 + (t + 500) % 1000}
            for i, t in zip(ids, labels, strict=True)
        )


def test_a_protocol_stating_another_preparation_is_refused(tmp_path: Path) -> None:
    protocol = dataclasses.replace(_shrink("imagenette", 4), image_preparation="resize to 32, no crop")
    with pytest.raises(ValueError, match=r"prepared as .*the protocol states 'resize to 32, no crop'"):
        load_protocol_data(protocol, str(tmp_path))


def test_a_ten_class_surrogate_is_refused_by_the_imagenet_protocol(tmp_path: Path, weights_mirror: Path) -> None:
    from bench.runner import EvaluationError

    with pytest.raises(EvaluationError, match=r"has 10 classes; imagenet-v1 accepts 1000\b"):
        evaluate(load_surrogate(_surrogate(tmp_path, 10)), get_protocol("imagenet"), None, {}, progress=False)  # type: ignore[arg-type]


def test_a_target_not_loaded_for_the_protocols_size_is_refused(tmp_path: Path, weights_mirror: Path) -> None:
    """Without the protocol's size, a target of another native size would see images it was not trained at."""
    from bench.runner import EvaluationError

    protocol = _shrink("imagenet", 4)
    surrogate = load_surrogate(_surrogate(tmp_path, 1000))
    native = next(n for n, (_, size) in TINY.items() if size != SIZE)
    for size, built in ((None, r"without an input size \(native"), ((3, 2 * SIZE, 2 * SIZE), r"for \[64, 64\]")):
        targets = load_targets(protocol.targets, weights_dir=weights_mirror, input_size=protocol.input_size)
        targets[native] = load_targets([native], weights_dir=weights_mirror, input_size=size)[native]
        with pytest.raises(
            EvaluationError, match=rf"target {native} was loaded {built}.*input_size=protocol.input_size"
        ):
            evaluate(surrogate, protocol, None, targets, progress=False)  # type: ignore[arg-type]
