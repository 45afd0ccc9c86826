"""Training the family targets (targets/train.py), pinning them, and publishing them to a Hub model repo
(targets/publish.py) against the local test Hub (tests/hub_server.py), then loading them back through the zoo.

Every registered target recipe trains a tiny member of its family (arch_* overrides) for 2 epochs on 64 random
3x32x32 images; the pins test trains the full-width MobileNetV2 (the smallest full-size family member)."""

from __future__ import annotations

import dataclasses
import json
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hub_server import FakeHub, running_hub
from huggingface_hub import constants
from safetensors.torch import load_file, save_file

from bench.attacks.budget import BudgetViolation
from bench.data import ImageSet, load_digits_smoke
from bench.hashing import sha256_file
from bench.registry import RegistryError
from surrogates.recipes import ModelSpec
from surrogates.submission import load_surrogate
from targets import TARGETS, TargetError, load_target
from targets.cifar10_family import FAMILY_TARGETS, MEASURED, ZOO_REPO, Measured, family_spec
from targets.publish import TargetPublishError, publish_target
from targets.train import (
    TARGET_RECIPES,
    BudgetCheckedPerturb,
    configure_target,
    target_pins,
    train_target,
)
from targets.zoo import HubWeights

N, QUICK = 64, {"epochs": 2, "batch_size": 32}  # 2 epochs of 2 steps
TINY: dict[str, dict[str, Any]] = {
    "tb-resnet50": {"arch_width": 4},
    "tb-vgg16-bn": {"arch_width": 4},
    "tb-densenet121": {"arch_growth_rate": 2},
    "tb-inception-v3": {"arch_width": 0.0625},
    "tb-mobilenet-v2": {"arch_width_mult": 0.25},
    "tb-wrn-28-10": {"arch_depth": 10, "arch_widen_factor": 1},
    "tb-vit-s4": {"arch_depth": 1, "arch_embed_dim": 16, "arch_num_heads": 2},
    "tb-resnet18-at8": {"arch_width": 4},
}
SHORT = {"tb-vit-s4": {"warmup_epochs": 1}}  # its 10 warm-up epochs (DeiT) would fill a 2-epoch run
FILES = {"model.safetensors", "config.json", "README.md"}
TOKEN = "hf_test_write_token"

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def random_cifar(n: int = N, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageSet(pixels, labels, torch.arange(n), 255, tuple(f"c{i}" for i in range(10)), f"random-{seed}")


def quick(name: str, **extra: Any) -> dict[str, Any]:
    return {**QUICK, **SHORT.get(name, {}), **TINY[name], **extra}


@pytest.fixture(scope="module")
def data() -> ImageSet:
    return random_cifar()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data: ImageSet) -> Iterator[dict[str, Path]]:
    """Every target trained once (tiny, 2 epochs), shared by the tests that only read the folders."""
    root, threads = tmp_path_factory.mktemp("trained"), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield {name: train_target(name, data, root / name, overrides=quick(name), test_data=random_cifar(32, 1))
               for name in TARGET_RECIPES}  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def _weights(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


# ---------------------------------------------------------------------------------------------------------------------
# Recipes


def test_every_family_target_has_one_recipe() -> None:
    assert set(TARGET_RECIPES) == {e.name for e in FAMILY_TARGETS} == set(TINY)
    recipes = [TARGET_RECIPES.get(n) for n in TARGET_RECIPES]
    assert len({r.config.seed for r in recipes}) == len(recipes)  # no two targets share a data order or init
    assert all(r.precision == "fp32" and r.source for r in recipes)
    at = TARGET_RECIPES.get("tb-resnet18-at8").config
    assert (at.at_norm, at.at_eps, at.at_steps, at.at_step_frac * at.at_eps) == ("linf", 8 / 255, 10, 2 / 255)
    assert at.at_random_start  # Madry et al. 2018 and Pang et al. 2021 start PGD at a random point
    assert (at.epochs, at.lr_milestones, at.lr_gamma) == (110, (100, 105), 0.1)
    wrn = TARGET_RECIPES.get("tb-wrn-28-10").config
    assert wrn.nesterov and (wrn.lr_milestones, wrn.lr_gamma, wrn.epochs) == ((60, 120, 160), 0.2, 200)
    assert TARGET_RECIPES.get("tb-vit-s4").optimizer == "adamw"
    assert all(TARGET_RECIPES.get(n).config.at_norm == "none" for n in TARGET_RECIPES if n != "tb-resnet18-at8")


def test_overrides_from_strings_and_their_errors() -> None:
    overrides = {"epochs": "3", "--batch-size": "16", "arch_depth": "2", "optimizer": "sgd", "bf16": "true",
                 "warmup_epochs": "1"}  # fmt: skip
    recipe, kwargs = configure_target("tb-vit-s4", overrides)
    assert (recipe.config.epochs, recipe.config.batch_size, recipe.optimizer, recipe.precision) == (
        3,
        16,
        "sgd",
        "bf16",
    )
    assert kwargs == {"img_size": 32, "patch_size": 4, "depth": 2}
    assert TARGET_RECIPES.get("tb-vit-s4").config.epochs == 200  # the registered recipe is untouched
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'epoch'.*Did you mean epochs.*arch_"):
        configure_target("tb-resnet50", {"epoch": 3})
    with pytest.raises(ValueError, match="bad value for epochs"):
        configure_target("tb-resnet50", {"epochs": "many"})
    with pytest.raises(ValueError, match="optimizer must be one of"):
        configure_target("tb-resnet50", {"optimizer": "adam"})
    with pytest.raises(ValueError, match="at_eps > 0 exactly when"):
        configure_target("tb-resnet50", {"at_norm": "linf"})
    with pytest.raises(RegistryError, match="Did you mean 'tb-resnet50'"):
        configure_target("tb-resnet05")


# ---------------------------------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("name", sorted(TINY))
def test_target_trains_and_writes_a_loadable_folder(name: str, trained: dict[str, Path], data: ImageSet) -> None:
    folder, spec = trained[name], TARGETS.get(name)
    assert {p.name for p in folder.iterdir()} == FILES
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted(TINY)  # no temporary folders left behind
    sub = load_surrogate(folder)
    cfg, meta = sub.config, sub.config.metadata
    assert (cfg.architecture, cfg.mean, cfg.std, cfg.num_classes) == (spec.architecture, spec.mean, spec.std, 10)
    arch_kwargs = {**spec.arch_kwargs, **{k.removeprefix("arch_"): v for k, v in TINY[name].items()}}
    assert cfg.arch_kwargs == arch_kwargs
    assert meta["target"] == name and meta["seed"] == TARGET_RECIPES.get(name).config.seed
    assert meta["overrides"] == quick(name) and meta["recipe"]["config"]["epochs"] == 2
    assert meta["weights_sha256"] == sha256_file(folder / "model.safetensors") == sub.sha256
    assert meta["train_data"] == {"source": data.source, "sha256": data.content_sha256(), "n_images": N}
    assert 0 <= meta["train_accuracy"] <= 1 and meta["test"]["n_images"] == 32 and len(meta["epochs"]) == 2
    card = (folder / "README.md").read_text()
    assert sub.sha256 in card and f"seed {meta['seed']}" in card and f"transferbench targets train {name}" in card
    # The weights were trained: they differ from the seeded initialisation the run started from.
    init = ModelSpec(spec.architecture, arch_kwargs, 10, (3, 32, 32), spec.mean, spec.std).build(meta["seed"]).net
    trained_state = load_file(str(folder / "model.safetensors"))
    assert any(not torch.equal(trained_state[k], v) for k, v in init.state_dict().items())
    with torch.no_grad():
        assert torch.isfinite(sub.runs[0](data.images()[:4])).all()


@pytest.mark.parametrize("name", ["tb-inception-v3", "tb-resnet18-at8"])  # dropout; PGD inner maximization
def test_same_seed_is_bit_identical_another_seed_differs(
    name: str, trained: dict[str, Path], data: ImageSet, tmp_path: Path
) -> None:
    rng = torch.get_rng_state()
    again = train_target(name, data, tmp_path / "again", overrides=quick(name), test_data=random_cifar(32, 1))
    assert torch.equal(torch.get_rng_state(), rng)  # the global generator is left as it was
    assert _weights(again) == _weights(trained[name])
    other = train_target(name, data, tmp_path / "other", overrides=quick(name, seed=5))
    assert _weights(other) != _weights(trained[name])


def test_dropout_draws_from_the_runs_own_seeded_stream(
    trained: dict[str, Path], data: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same recipe seed, another dropout stream: other weights (so the stream, not the global state, decides)."""
    import targets.train

    torch.manual_seed(12345)  # a global state unlike the one the shared run saw: it must not matter
    same = train_target("tb-vgg16-bn", data, tmp_path / "same", overrides=quick("tb-vgg16-bn"))
    assert _weights(same) == _weights(trained["tb-vgg16-bn"])
    monkeypatch.setattr(targets.train, "_module_seed", lambda seed: seed + 1)
    other = train_target("tb-vgg16-bn", data, tmp_path / "other", overrides=quick("tb-vgg16-bn"))
    assert _weights(other) != _weights(trained["tb-vgg16-bn"])


def test_adversarial_training_batches_are_checked_and_in_budget(trained: dict[str, Path]) -> None:
    at = json.loads((trained["tb-resnet18-at8"] / "config.json").read_text())["metadata"]["adversarial_training"]
    assert at["norm"] == "linf" and at["eps"] == 8 / 255
    assert at["batches_checked"] == QUICK["epochs"] * math.ceil(N / QUICK["batch_size"])
    assert 0.5 * 8 / 255 < at["largest_perturbation"] <= 8 / 255 + 1e-6
    for name in set(TINY) - {"tb-resnet18-at8"}:
        assert "adversarial_training" not in json.loads((trained[name] / "config.json").read_text())["metadata"]


@pytest.mark.parametrize(("norm", "eps"), [("linf", 8 / 255), ("l2", 0.5)])
def test_budget_check_passes_in_budget_batches_and_raises_outside(norm: str, eps: float) -> None:
    x = torch.rand(4, 3, 8, 8)
    step = torch.full_like(x, eps) if norm == "linf" else torch.full_like(x, eps / math.sqrt(x[0].numel()))
    inside = BudgetCheckedPerturb(lambda m, xx, t, g: (xx + 0.99 * step).clamp(0, 1), norm, eps)
    gen = torch.Generator()
    assert torch.equal(inside(torch.nn.Identity(), x, torch.zeros(4), gen), (x + 0.99 * step).clamp(0, 1))
    assert inside.batches == 1 and 0 < inside.largest <= eps
    outside = BudgetCheckedPerturb(lambda m, xx, t, g: xx + 2 * step, norm, eps)
    with pytest.raises(BudgetViolation):
        outside(torch.nn.Identity(), x, torch.zeros(4), gen)
    assert outside.batches == 0


def test_existing_folder_and_wrong_data_are_refused_before_training(tmp_path: Path, data: ImageSet) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        train_target("tb-vit-s4", data, tmp_path / "taken", overrides=quick("tb-vit-s4"))
    with pytest.raises(ValueError, match=r"3-channel images of 10 classes.*1 channels"):
        train_target("tb-vit-s4", load_digits_smoke(), tmp_path / "digits", overrides=quick("tb-vit-s4"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_failed_write_leaves_nothing(tmp_path: Path, data: ImageSet, monkeypatch: pytest.MonkeyPatch) -> None:
    import targets.train

    def broken(*args: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(targets.train, "model_card", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        train_target("tb-vit-s4", data, tmp_path / "out", overrides=quick("tb-vit-s4"))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------------
# Pins


@pytest.fixture(scope="module")
def full_mobilenet(tmp_path_factory: pytest.TempPathFactory, data: ImageSet) -> Path:
    """The zoo entry's own architecture (full-width MobileNetV2), one epoch: a folder that can be pinned."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_target("tb-mobilenet-v2", data, tmp_path_factory.mktemp("full") / "m", overrides={"epochs": 1})
    finally:
        torch.set_num_threads(threads)


def test_pins_measure_the_folder_and_paste_into_the_zoo(full_mobilenet: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    test = random_cifar(48, seed=2)
    with pytest.raises(TargetError, match=r"trained with overrides \{'epochs': 1\}"):
        target_pins(full_mobilenet, test)
    pins = target_pins(full_mobilenet, test, revision="a" * 40, allow_overrides=True)
    sub = load_surrogate(full_mobilenet)
    with torch.no_grad():
        expected = float((sub.runs[0](test.images()).argmax(1) == test.labels).double().mean())
    assert pins.sha256 == sha256_file(full_mobilenet / "model.safetensors")
    assert (pins.name, pins.accuracy) == ("tb-mobilenet-v2", expected)
    assert (pins.data_sha256, pins.n_images, pins.revision) == (test.content_sha256(), 48, "a" * 40)
    # The printed line is the MEASURED entry that pins the zoo spec.
    measured = eval("{" + pins.as_code() + "}", {"Measured": Measured})  # our own generated line
    monkeypatch.setitem(MEASURED, "tb-mobilenet-v2", measured["tb-mobilenet-v2"])
    spec = family_spec(next(e for e in FAMILY_TARGETS if e.name == "tb-mobilenet-v2"))
    assert spec.source == HubWeights(ZOO_REPO, "tb-mobilenet-v2/model.safetensors", "a" * 40, pins.sha256)
    assert spec.expected_accuracy == ((test.content_sha256(), expected),) and spec.pinned


def test_pins_refuse_other_architectures_and_changed_weights(
    full_mobilenet: Path, trained: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(TargetError, match="is not the zoo entry 'tb-mobilenet-v2'"):
        target_pins(trained["tb-mobilenet-v2"], random_cifar(8), allow_overrides=True)
    changed = tmp_path / "changed"
    changed.mkdir()
    for f in FILES:
        (changed / f).write_bytes((full_mobilenet / f).read_bytes())
    state = load_file(str(changed / "model.safetensors"))
    state["linear.bias"] = state["linear.bias"] + 1
    save_file(state, str(changed / "model.safetensors"))
    with pytest.raises(TargetError, match="changed after training"):
        target_pins(changed, random_cifar(8), allow_overrides=True)


# ---------------------------------------------------------------------------------------------------------------------
# Publishing to the test Hub, and loading back through the zoo


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A throw-away Hugging Face home and cache, a known token, no telemetry, no Hub settings from outside."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import; hf_hub_download reads this
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))  # no saved login
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    for var in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("targets.publish._BACKOFF_S", 0.01)


@pytest.fixture
def hub(hf_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with running_hub(repos=(), model_repos=(ZOO_REPO,)) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.endpoint)  # where the zoo loader downloads from
        yield h
        assert not h.unknown_routes, f"the client called routes the test Hub does not know: {h.unknown_routes}"


def _published(hub: FakeHub, name: str) -> dict[str, bytes]:
    return {
        p.split("/", 1)[1]: d for p, d in hub.files(ZOO_REPO, repo_type="model").items() if p.startswith(f"{name}/")
    }


def test_publish_commits_the_three_files_and_the_zoo_loads_them(hub: FakeHub, trained: dict[str, Path]) -> None:
    folder, name = trained["tb-vgg16-bn"], "tb-vgg16-bn"
    before = hub.head(ZOO_REPO, repo_type="model")
    sha = publish_target(folder, ZOO_REPO, endpoint=hub.endpoint, allow_overrides=True)
    history = hub.history(ZOO_REPO, repo_type="model")
    assert sha == history[0].sha and history[0].parent == before and name in history[0].message
    assert _published(hub, name) == {f: (folder / f).read_bytes() for f in FILES}
    # Publishing the same folder again commits nothing and answers with the commit that holds it.
    assert (
        publish_target(folder, ZOO_REPO, endpoint=hub.endpoint, allow_overrides=True)
        == sha
        == hub.head(ZOO_REPO, repo_type="model")
    )
    # The zoo loader reads the published weights at that revision, sha256-verified (tiny architecture: a stand-in
    # entry with the folder's arch_kwargs).
    sub = load_surrogate(folder)
    spec = dataclasses.replace(TARGETS.get(name), name="test-published-vgg", arch_kwargs=sub.config.arch_kwargs,
                               source=HubWeights(ZOO_REPO, f"{name}/model.safetensors", sha, sub.sha256))  # fmt: skip
    with TARGETS.scoped(spec.name, spec):
        target = load_target(spec.name)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target.model(x), sub.runs[0](x), rtol=0, atol=0)
    assert target.sha256 == sub.sha256


def test_publish_refuses_other_content_unless_overwrite(
    hub: FakeHub, trained: dict[str, Path], data: ImageSet, tmp_path: Path
) -> None:
    name = "tb-vit-s4"
    first = publish_target(trained[name], ZOO_REPO, endpoint=hub.endpoint, allow_overrides=True)
    retrained = train_target(name, data, tmp_path / name, overrides=quick(name, seed=9))
    with pytest.raises(TargetPublishError, match=rf"already holds {name}/model.safetensors.*overwrite=True"):
        publish_target(retrained, ZOO_REPO, endpoint=hub.endpoint, allow_overrides=True)
    assert hub.head(ZOO_REPO, repo_type="model") == first
    second = publish_target(
        retrained, ZOO_REPO, endpoint=hub.endpoint, overwrite=True, revision_message="Retrain", allow_overrides=True
    )
    assert second != first and hub.history(ZOO_REPO, repo_type="model")[0].message == "Retrain"
    assert _published(hub, name)["model.safetensors"] == _weights(retrained)


def test_publish_retries_when_the_branch_moves(hub: FakeHub, trained: dict[str, Path]) -> None:
    hub.commit_before_next_request(ZOO_REPO, {"other/README.md": b"someone else"}, "foreign", repo_type="model")
    sha = publish_target(trained["tb-wrn-28-10"], ZOO_REPO, endpoint=hub.endpoint, allow_overrides=True)
    files = hub.files(ZOO_REPO, repo_type="model")
    assert sha == hub.head(ZOO_REPO, repo_type="model") and files["other/README.md"] == b"someone else"
    assert "tb-wrn-28-10/model.safetensors" in files
    assert hub.count("POST", r"/api/models/.*/commit/") == 2  # the first commit was refused (412), the retry landed


def test_publish_gives_up_when_the_branch_keeps_moving(hub: FakeHub, trained: dict[str, Path]) -> None:
    for i in range(3):
        hub.commit_before_next_request(ZOO_REPO, {f"other/{i}.md": b"x"}, f"foreign {i}", repo_type="model")
    with pytest.raises(TargetPublishError, match="branch changed under each of 3 attempts"):
        publish_target(trained["tb-mobilenet-v2"], ZOO_REPO, endpoint=hub.endpoint, allow_overrides=True)
    assert not any(p.startswith("tb-mobilenet-v2/") for p in hub.files(ZOO_REPO, repo_type="model"))


def test_publish_errors_name_the_cause(
    hub: FakeHub, trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = trained["tb-resnet50"]
    with pytest.raises(TargetPublishError, match=r"transferbench/nope was not found.*hf repos create"):
        publish_target(folder, "transferbench/nope", endpoint=hub.endpoint, allow_overrides=True)
    with pytest.raises(TargetPublishError, match="unreachable"):
        publish_target(folder, ZOO_REPO, endpoint=f"http://127.0.0.1:{_closed_port()}", allow_overrides=True)
    with pytest.raises(TargetPublishError, match="invalid Hub repo id"):
        publish_target(folder, "no-owner", endpoint=hub.endpoint, allow_overrides=True)
    n_requests = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TargetPublishError, match="HF_HUB_OFFLINE is set"):
        publish_target(folder, ZOO_REPO, endpoint=hub.endpoint, allow_overrides=True)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(TargetPublishError, match=r"no Hugging Face token.*HF_TOKEN"):
        publish_target(folder, ZOO_REPO, endpoint=hub.endpoint, allow_overrides=True)
    changed = tmp_path / "changed"
    changed.mkdir()
    for f in FILES:
        (changed / f).write_bytes((folder / f).read_bytes())
    (changed / "model.safetensors").write_bytes(b"not the trained weights")
    with pytest.raises(TargetPublishError, match="changed after training"):
        publish_target(changed, ZOO_REPO, endpoint=hub.endpoint, token=TOKEN, allow_overrides=True)
    with pytest.raises(TargetPublishError, match=r"config\.json not found"):
        publish_target(tmp_path, ZOO_REPO, endpoint=hub.endpoint, token=TOKEN, allow_overrides=True)
    with pytest.raises(TargetPublishError, match=r"is not the zoo entry 'tb-resnet50'.*\{'width': 4\}"):
        publish_target(folder, ZOO_REPO, endpoint=hub.endpoint, token=TOKEN)  # a tiny run is not the zoo entry
    cfg = json.loads((folder / "config.json").read_text())
    cfg["mean"] = [0.5, 0.5, 0.5]
    (changed / "config.json").write_text(json.dumps(cfg))
    (changed / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(TargetPublishError, match=r"is not the zoo entry 'tb-resnet50'"):
        publish_target(changed, ZOO_REPO, endpoint=hub.endpoint, token=TOKEN, allow_overrides=True)
    assert len(hub.requests) == n_requests  # nothing was sent for the refusals above
    assert "tb-resnet50/config.json" not in hub.files(ZOO_REPO, repo_type="model")


def test_publish_needs_a_write_token(hf_env: None, trained: dict[str, Path]) -> None:
    with running_hub(repos=(), model_repos=(ZOO_REPO,), tokens={"hf_writer": "write", "hf_reader": "read"}) as hub:
        with pytest.raises(TargetPublishError, match=r"refused the token \(HTTP 403\).*write access"):
            publish_target(
                trained["tb-densenet121"], ZOO_REPO, endpoint=hub.endpoint, token="hf_reader", allow_overrides=True
            )
        sha = publish_target(
            trained["tb-densenet121"], ZOO_REPO, endpoint=hub.endpoint, token="hf_writer", allow_overrides=True
        )
        assert sha == hub.head(ZOO_REPO, repo_type="model") and not hub.unknown_routes


def test_publish_refuses_recipe_overrides_unless_asked(hub: FakeHub, full_mobilenet: Path) -> None:
    """A folder of the zoo's architecture trained with other hyperparameters is not the registered target."""
    with pytest.raises(TargetPublishError, match=r"trained with overrides .*retrain without them"):
        publish_target(full_mobilenet, ZOO_REPO, endpoint=hub.endpoint, token=TOKEN)
    assert not any(p.startswith("tb-mobilenet-v2/") for p in hub.files(ZOO_REPO, repo_type="model"))
    sha = publish_target(full_mobilenet, ZOO_REPO, endpoint=hub.endpoint, token=TOKEN, allow_overrides=True)
    assert sha == hub.head(ZOO_REPO, repo_type="model")


def test_the_vit_recipe_does_not_decay_norms_biases_or_embeddings() -> None:
    """DeiT's AdamW setting: weight decay on matrices only; the class token and position embedding are spared."""
    from bench.models import build_model
    from targets.train import decay_groups

    model = build_model("timm:vit_small_patch16_224", 10, (0.5,) * 3, (0.5,) * 3, img_size=32, patch_size=4,
                        depth=1, embed_dim=16, num_heads=2)  # fmt: skip
    groups = decay_groups(model, 0.05)
    names = {id(p): n for n, p in model.net.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    spared = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"cls_token", "pos_embed", "norm.weight", "head.bias"} <= spared
    assert {"patch_embed.proj.weight", "head.weight", "blocks.0.attn.qkv.weight"} <= decayed
    assert decayed.isdisjoint(spared) and len(decayed | spared) == len(names)
