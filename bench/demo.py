"""The offline smoke run: everything the benchmark does, on scikit-learn's digits, on a CPU in minutes.

Trains (and caches under TRANSFERBENCH_HOME/demo) the three smoke targets and two differently trained
surrogates, plain training (ST) and input-gradient regularization (IR), evaluates both under the
``smoke-digits`` protocol, writes a leaderboard record each and returns them. Smoke numbers are labelled
as such everywhere and never mixed with benchmark results.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench import paths
from bench.data import ImageSet, load_digits_smoke
from bench.models import build_model
from bench.protocol import get_protocol
from bench.runner import evaluate
from leaderboard.record import Record
from leaderboard.store import LocalStore
from surrogates.submission import load_surrogate, save_surrogate
from surrogates.training import TrainConfig, train_classifier
from targets.smoke_zoo import DIGITS_MEAN, DIGITS_STD, SMOKE_TARGETS
from targets.zoo import load_targets

log = logging.getLogger(__name__)

SURROGATES = {
    # name: (recipe, TrainConfig). IR weight chosen so accuracy stays within a few points of ST.
    "smoke-st": ("ST", TrainConfig(epochs=30, seed=1)),
    "smoke-ir": ("IR", TrainConfig(epochs=30, seed=1, input_grad_penalty=0.5)),
}
SURROGATE_ARCH = ("small_cnn", {"width": 32})


def train_split(data: ImageSet, held_out: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of ``data`` outside the protocol's held-out image list."""
    keep = torch.tensor([i not in set(held_out) for i in data.ids.tolist()])
    return data.images()[keep], data.labels[keep]


def build_targets(data: ImageSet, held_out: tuple[int, ...], root: Path) -> None:
    x, y = train_split(data, held_out)
    for name, (arch, kwargs, seed) in SMOKE_TARGETS.items():
        path = root / "demo" / "targets" / f"{name}.safetensors"
        if path.is_file():
            continue
        torch.manual_seed(seed)
        model = build_model(arch, 10, DIGITS_MEAN, DIGITS_STD, **kwargs)
        train_classifier(model, x, y, TrainConfig(epochs=30, seed=seed))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, str(path))
        log.info("trained smoke target %s", name)


def build_surrogates(data: ImageSet, held_out: tuple[int, ...], root: Path) -> dict[str, Path]:
    x, y = train_split(data, held_out)
    out = {}
    arch, kwargs = SURROGATE_ARCH
    for name, (recipe, cfg) in SURROGATES.items():
        folder = root / "demo" / "surrogates" / name
        if not (folder / "model.safetensors").is_file():
            torch.manual_seed(cfg.seed)
            model = build_model(arch, 10, DIGITS_MEAN, DIGITS_STD, **kwargs)
            train_classifier(model, x, y, cfg)
            save_surrogate(model, folder, architecture=arch, num_classes=10, mean=DIGITS_MEAN, std=DIGITS_STD,
                           input_size=(1, 8, 8), arch_kwargs=kwargs, overwrite=True,
                           metadata={"name": name, "recipe": recipe, "train_config": cfg.__dict__})  # fmt: skip
        out[name] = folder
    return out


def run_demo(store: LocalStore | None = None, *, progress: bool = True) -> list[Record]:
    protocol = get_protocol("smoke-digits")
    root = paths.home()
    data = load_digits_smoke()
    build_targets(data, protocol.image_ids, root)
    folders = build_surrogates(data, protocol.image_ids, root)
    tg = load_targets(protocol.targets)
    store = store or LocalStore()
    records = []
    for folder in folders.values():
        rec = evaluate(load_surrogate(folder), protocol, data, tg, batch_size=600, progress=progress)
        store.add(rec, overwrite=True)
        records.append(rec)
    return records
