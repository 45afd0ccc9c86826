"""Shared fixtures: an isolated TRANSFERBENCH_HOME per test, the optional ../shared folder, tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.models import build_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_CIFAR = SHARED / "data" / "cifar10-jpeg"
SHARED_WEIGHTS = SHARED / "weights" / "cifar10-resnet-akamaster"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own TRANSFERBENCH_HOME and no mirror, offline or cuBLAS settings from the environment."""
    home = tmp_path_factory.mktemp("tbhome")
    monkeypatch.setenv("TRANSFERBENCH_HOME", str(home))
    for var in (
        "TRANSFERBENCH_WEIGHTS_DIR",
        "TRANSFERBENCH_CIFAR10_DIR",
        "TRANSFERBENCH_IMAGENETTE_DIR",
        "TRANSFERBENCH_IMAGENET_DIR",
        "TRANSFERBENCH_IMAGENET_COMPATIBLE_DIR",
        "TRANSFERBENCH_OFFLINE",
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
    ):
        monkeypatch.delenv(var, raising=False)
    # Unset for the test and restored after it, also when the code under test sets it (--deterministic does):
    # setenv records the value to restore, delenv then clears it.
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    return home


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for files of many tiny models: thread start-up dominates their convolutions."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_cifar() -> Path:
    if not (SHARED_CIFAR / "test.parquet").is_file():
        pytest.skip(f"real CIFAR-10 mirror not present at {SHARED_CIFAR}")
    return SHARED_CIFAR


@pytest.fixture
def shared_weights() -> Path:
    if not SHARED_WEIGHTS.is_dir():
        pytest.skip(f"external CIFAR-10 ResNets not present at {SHARED_WEIGHTS}")
    return SHARED_WEIGHTS


def tiny_cifar_model(seed: int = 0, width: int = 8) -> torch.nn.Module:
    """A randomly initialised, eval-mode ResNet-18 of width 8 on 3x32x32 inputs (fast on CPU)."""
    torch.manual_seed(seed)
    return build_model("cifar_resnet18", 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), width=width).eval()


def tiny_digits_model(seed: int = 0, arch: str = "small_cnn", **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, 10, (0.5,), (0.5,), **kwargs).eval()


def trained_digits_model(seed: int, arch: str = "small_cnn", *, epochs: int, **kwargs: object) -> torch.nn.Module:
    """``tiny_digits_model`` trained on the digits the smoke protocol does not hold out (every third is held out)."""
    from bench.data import load_digits_smoke
    from surrogates.training import TrainConfig, train_classifier

    data = load_digits_smoke()
    keep = data.ids % 3 != 0
    model = tiny_digits_model(seed, arch, **kwargs)
    return train_classifier(model, data.images()[keep], data.labels[keep], TrainConfig(epochs=epochs, seed=seed))
