"""Hub-hosted targets: ``HubWeights`` through a weights mirror and through the real ``huggingface_hub`` client
talking to the local test Hub (``tests/hub_server.py``, model repos), the timm pretrained-config entries, the
native-size resize, and the ImageNet zoo's entries checked against the installed timm (no weights needed).

Tiny random timm models (``test_vit``, ``test_resnet``, ``test_efficientnet``) stand in for the real ones: they
are saved as ``model.safetensors`` exactly as timm publishes its weights and loaded through ``load_target``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from hub_server import FakeHub, running_hub
from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import _http as hf_http
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg

from bench.hashing import HashMismatch
from bench.models import NormalizedModel, build_architecture
from bench.models.adapters import ResizeInput
from targets import TARGETS, TargetError, TargetSpec, describe_source, load_target, load_targets, unpinned_targets
from targets.imagenet_zoo import IMAGENET_TARGETS
from targets.zoo import HubWeights, UrlWeights, resolve_weights, timm_target

REPO = "org/tiny-target"
NAME = "test-hub-target"
NATIVE = {"test_vit": "test_vit.r160_in1k", "test_resnet": "test_resnet.r160_in1k",
          "test_efficientnet": "test_efficientnet.r160_in1k"}  # fmt: skip
NUM_CLASSES = 7

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache per test, no telemetry or token, and an endpoint where nothing listens.

    Tests that use the test Hub point HF_ENDPOINT at it (``hub`` fixture); the others fail loudly if they try
    the network. Returns the cache folder.
    """
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import; hf_hub_download reads this
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    return cache


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with running_hub(repos=(), model_repos=(REPO,)) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.endpoint)
        yield h
        assert not h.unknown_routes, f"the client called routes the test Hub does not know: {h.unknown_routes}"


@pytest.fixture
def register() -> Iterator[Callable[[TargetSpec], TargetSpec]]:
    """Registers temporary zoo entries; they are removed again after the test."""
    added: list[str] = []

    def add(spec: TargetSpec) -> TargetSpec:
        TARGETS.add(spec.name, spec)
        added.append(spec.name)
        return spec

    yield add
    for name in set(added) & set(TARGETS):  # a test may already have removed (and replaced) one
        TARGETS.remove(name)


def _spec(arch: str = "test_vit", **source: object) -> TargetSpec:
    """A timm entry built from the tiny model's pretrained config, with few classes and weights in ``REPO``."""
    base = timm_target(NAME, NATIVE[arch], family="cnn", citation="test")
    return dataclasses.replace(base, num_classes=NUM_CLASSES, source=HubWeights(REPO, **source))  # type: ignore[arg-type]


def _net(arch: str = "test_vit", seed: int = 0) -> torch.nn.Module:
    """A randomly initialised tiny timm network with non-trivial BatchNorm statistics (eval mode)."""
    torch.manual_seed(seed)
    net = build_architecture(f"timm:{arch}", NUM_CLASSES).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def _safetensors(net: torch.nn.Module) -> bytes:
    """The bytes of ``model.safetensors`` for ``net`` (the layout of timm's Hub weights)."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in net.state_dict().items()})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mirror(root: Path, data: bytes, relpath: str = f"{REPO}/model.safetensors") -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return root


def _x(size: int = 160, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _expected(spec: TargetSpec, net: torch.nn.Module) -> NormalizedModel:
    return NormalizedModel(net, spec.mean, spec.std).eval()


def _assert_same(model: torch.nn.Module, reference: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def _publish(hub: FakeHub, files: dict[str, bytes], message: str = "add weights") -> str:
    """A commit made through the real client (upload), as a publisher of targets would; returns its sha."""
    api = HfApi(endpoint=hub.endpoint, token=False)
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=d) for p, d in files.items()]
    return api.create_commit(REPO, ops, commit_message=message).oid


# ----------------------------------------------------------------------------------------------------------------------
# The same load_target path: mirror and Hub
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(NATIVE))
def test_mirror_and_hub_give_the_original_logits(
    arch: str, hub: FakeHub, register: Callable[[TargetSpec], TargetSpec], tmp_path: Path, hf_env: Path
) -> None:
    net = _net(arch, seed=3)
    data = _safetensors(net)
    commit = _publish(hub, {"model.safetensors": data, "README.md": b"tiny\n"})
    spec = register(_spec(arch, revision=commit, sha256=_sha(data)))
    x = _x()

    mirror = _mirror(tmp_path / "mirror", data)
    n_requests = len(hub.requests)
    from_mirror = load_target(NAME, weights_dir=mirror)
    assert len(hub.requests) == n_requests  # the mirror is read in place, nothing is asked of the Hub
    assert from_mirror.sha256 == _sha(data) and from_mirror.pinned
    assert from_mirror.source == f"hf://{REPO}@{commit}/model.safetensors"
    assert isinstance(from_mirror.model, NormalizedModel)  # protocol size = native size: no resize
    assert not any(m.training for m in from_mirror.model.modules())
    _assert_same(from_mirror.model, _expected(spec, net), x)

    from_hub = load_target(NAME)
    assert from_hub.sha256 == _sha(data) and from_hub.source == from_mirror.source
    assert hub.count("GET", rf"^/{REPO}/resolve/{commit}/model.safetensors$") == 1
    _assert_same(from_hub.model, _expected(spec, net), x)
    cached = resolve_weights(spec)[0]
    assert hf_env in cached.parents and cached.read_bytes() == data  # the Hugging Face cache holds it

    other = _net(arch, seed=4)  # a different model gives different logits: the comparison above can fail
    with torch.no_grad():
        assert not torch.equal(from_hub.model(x), _expected(spec, other)(x))


def test_unpinned_entry_loads_with_a_warning_and_records_the_measured_hash(
    hub: FakeHub, register: Callable[[TargetSpec], TargetSpec], caplog: pytest.LogCaptureFixture
) -> None:
    net = _net()
    data = _safetensors(net)
    commit = _publish(hub, {"model.safetensors": data})
    spec = register(_spec())  # neither revision nor sha256: follows main, pins nothing
    assert not spec.pinned and unpinned_targets([NAME]) == [NAME]
    with caplog.at_level(logging.WARNING, logger="targets.zoo"):
        target = load_target(NAME)
    assert target.sha256 == _sha(data) and not target.pinned
    assert target.source == f"hf://{REPO}@{commit}/model.safetensors"  # the commit main pointed at
    assert any("not pinned by sha256" in r.getMessage() and _sha(data) in r.getMessage() for r in caplog.records)
    _assert_same(target.model, _expected(spec, net), _x())
    assert "revision not pinned" in describe_source(spec) and "sha256 not pinned" in describe_source(spec)


def test_pinned_sha256_mismatch_names_file_hashes_and_fix(
    hub: FakeHub, register: Callable[[TargetSpec], TargetSpec], tmp_path: Path
) -> None:
    data = _safetensors(_net())
    commit = _publish(hub, {"model.safetensors": data})
    wrong = "0" * 64
    register(_spec(revision=commit, sha256=wrong))
    with pytest.raises(HashMismatch) as err:
        load_target(NAME)
    msg = str(err.value)
    assert NAME in msg and "model.safetensors" in msg and wrong in msg and _sha(data) in msg
    assert "transferbench targets fetch" in msg and "delete " in msg and "damaged" in msg

    mirror = _mirror(tmp_path / "mirror", data + b"\0")  # a damaged mirror copy
    with pytest.raises(HashMismatch) as err2:
        load_target(NAME, weights_dir=mirror)
    assert str(mirror / REPO / "model.safetensors") in str(err2.value) and _sha(data + b"\0") in str(err2.value)


def test_html_instead_of_weights(hub: FakeHub, register: Callable[[TargetSpec], TargetSpec], tmp_path: Path) -> None:
    page = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
    commit = _publish(hub, {"model.safetensors": page})
    register(_spec(revision=commit, sha256=_sha(page)))  # even with a matching hash
    with pytest.raises(TargetError, match="HTML page") as err:
        load_target(NAME)
    assert NAME in str(err.value) and f"hf://{REPO}@{commit}/model.safetensors" in str(err.value)
    mirror = _mirror(tmp_path / "mirror", b"\n <html><head><title>404</title>")
    with pytest.raises(TargetError, match="HTML page") as err2:
        load_target(NAME, weights_dir=mirror)
    assert str(mirror / REPO / "model.safetensors") in str(err2.value)


def test_not_safetensors_is_named(hub: FakeHub, register: Callable[[TargetSpec], TargetSpec]) -> None:
    junk = b"\x00\x01 not a safetensors file"
    register(_spec(revision=_publish(hub, {"model.safetensors": junk}), sha256=_sha(junk)))
    with pytest.raises(TargetError, match="not a readable safetensors file"):
        load_target(NAME)


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFERBENCH_OFFLINE"])
def test_offline_with_nothing_cached(
    var: str,
    hub: FakeHub,
    register: Callable[[TargetSpec], TargetSpec],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    data = _safetensors(_net())
    commit = _publish(hub, {"model.safetensors": data})
    register(_spec(revision=commit, sha256=_sha(data)))
    n_requests = len(hub.requests)
    monkeypatch.setenv(var, "1")
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    with pytest.raises(TargetError) as err:
        load_target(NAME, weights_dir=empty)
    msg = str(err.value)
    assert f"{empty}/{REPO}/model.safetensors" in msg and "<weights-dir>/<repo_id>/<filename>" in msg
    assert REPO in msg and commit in msg and f"transferbench targets fetch {NAME}" in msg
    assert "TRANSFERBENCH_OFFLINE/HF_HUB_OFFLINE" in msg
    assert len(hub.requests) == n_requests  # offline means no request at all


def test_offline_uses_the_hugging_face_cache(
    hub: FakeHub, register: Callable[[TargetSpec], TargetSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _net(seed=9)
    data = _safetensors(net)
    commit = _publish(hub, {"model.safetensors": data})
    spec = register(_spec(revision=commit, sha256=_sha(data)))
    load_target(NAME)  # fills the cache
    n_requests = len(hub.requests)
    monkeypatch.setenv("TRANSFERBENCH_OFFLINE", "1")
    target = load_target(NAME)
    assert len(hub.requests) == n_requests and target.source == f"hf://{REPO}@{commit}/model.safetensors"
    _assert_same(target.model, _expected(spec, net), _x())


def test_pinned_revision_ignores_later_commits(hub: FakeHub, register: Callable[[TargetSpec], TargetSpec]) -> None:
    v1, v2 = _net(seed=1), _net(seed=2)
    first = _publish(hub, {"model.safetensors": _safetensors(v1)}, "v1")
    second = _publish(hub, {"model.safetensors": _safetensors(v2)}, "v2: retrained")
    assert hub.head(REPO) == second != first
    pinned = register(_spec(revision=first))
    x = _x()
    target = load_target(NAME)
    assert target.source == f"hf://{REPO}@{first}/model.safetensors"
    assert target.sha256 == _sha(_safetensors(v1))
    _assert_same(target.model, _expected(pinned, v1), x)
    assert hub.count("GET", f"/resolve/{first}/") == 1 and hub.count("GET", f"/resolve/{second}/") == 0

    TARGETS.remove(NAME)
    follows_main = register(_spec())
    latest = load_target(NAME)
    assert latest.source == f"hf://{REPO}@{second}/model.safetensors"
    _assert_same(latest.model, _expected(follows_main, v2), x)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"revision": "f" * 40}, "RevisionNotFound"),
        ({"filename": "weights/missing.safetensors"}, "EntryNotFound"),
    ],
)
def test_missing_revision_or_file(
    source: dict[str, str], expected: str, hub: FakeHub, register: Callable[[TargetSpec], TargetSpec]
) -> None:
    _publish(hub, {"model.safetensors": _safetensors(_net())})
    register(_spec(**source))
    with pytest.raises(TargetError) as err:
        load_target(NAME)
    msg = str(err.value)
    assert NAME in msg and REPO in msg and expected in msg
    assert source.get("revision", "main") in msg and source.get("filename", "model.safetensors") in msg


def test_unreachable_hub_names_the_endpoint(
    register: Callable[[TargetSpec], TargetSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(hf_http.time, "sleep", pauses.append)  # the client's retries, without their waiting
    register(_spec())
    with pytest.raises(TargetError, match="could not be fetched") as err:
        load_target(NAME)
    assert "HF_ENDPOINT" in str(err.value) and os.environ["HF_ENDPOINT"] in str(err.value)
    assert pauses  # the client did retry before giving up


def test_architecture_mismatch_is_refused(hub: FakeHub, register: Callable[[TargetSpec], TargetSpec]) -> None:
    data = _safetensors(_net("test_resnet"))
    register(_spec("test_vit", revision=_publish(hub, {"model.safetensors": data})))
    with pytest.raises(TargetError, match="does not match architecture 'timm:test_vit'"):
        load_target(NAME)


# ----------------------------------------------------------------------------------------------------------------------
# Torch checkpoints with key handling as data (the layout of adversarial-training checkpoints)
# ----------------------------------------------------------------------------------------------------------------------


def _robustness_checkpoint(net: torch.nn.Module, path: Path) -> bytes:
    """A checkpoint laid out like the MadryLab ``robustness`` library's: classifier, attacker copy, normalizer."""
    state = net.state_dict()
    model = {f"module.model.{k}": v for k, v in state.items()}
    model |= {f"module.attacker.model.{k}": v.clone() for k, v in state.items()}
    model |= {"module.normalizer.new_mean": torch.zeros(3, 1, 1), "module.normalizer.new_std": torch.ones(3, 1, 1)}
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": []}, "epoch": 90}, path)
    return path.read_bytes()


def test_torch_checkpoint_on_the_hub_with_prefix_handling(
    hub: FakeHub, register: Callable[[TargetSpec], TargetSpec], tmp_path: Path
) -> None:
    net = _net("test_resnet", seed=5)
    data = _robustness_checkpoint(net, tmp_path / "ckpt.pt")
    commit = _publish(hub, {"resnet_linf_eps4.0.ckpt": data})
    keys = {"filename": "resnet_linf_eps4.0.ckpt", "revision": commit, "format": "torch", "state_key": "model"}
    spec = register(_spec("test_resnet", **keys, strip_prefix="module.model.", drop_unprefixed=True))
    target = load_target(NAME)
    _assert_same(target.model, _expected(spec, net), _x())

    TARGETS.remove(NAME)
    register(_spec("test_resnet", **keys, strip_prefix="module.model."))  # keeps the attacker copy: refused
    with pytest.raises(TargetError, match=r"unexpected \['module\.attacker\.model\."):
        load_target(NAME)


def test_key_handling_is_validated() -> None:
    with pytest.raises(ValueError, match="drop_unprefixed needs a strip_prefix"):
        HubWeights(REPO, drop_unprefixed=True)
    with pytest.raises(ValueError, match="'owner/name'"):
        HubWeights("no-owner")
    with pytest.raises(ValueError, match="inside the repo"):
        HubWeights(REPO, "../model.safetensors")
    with pytest.raises(ValueError, match="format"):
        HubWeights(REPO, format="pickle")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------------
# Native input size
# ----------------------------------------------------------------------------------------------------------------------


def test_resize_to_the_native_size_when_the_protocol_differs(
    register: Callable[[TargetSpec], TargetSpec], tmp_path: Path
) -> None:
    net = _net("test_vit", seed=6)
    data = _safetensors(net)
    spec = register(_spec("test_vit", sha256=_sha(data)))
    assert spec.input_size == (3, 160, 160) and spec.interpolation == "bicubic"
    mirror = _mirror(tmp_path / "mirror", data)
    x = _x(64)  # the protocol's images, 64 px

    loaded = load_targets([NAME], weights_dir=mirror, input_size=(3, 64, 64))[NAME]
    assert isinstance(loaded.model, ResizeInput) and loaded.model.size == (160, 160)
    assert loaded.model.interpolation == "bicubic" and not loaded.model.training
    up = F.interpolate(x, size=(160, 160), mode="bicubic", align_corners=False).clamp(0, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), _expected(spec, net)(up), rtol=0, atol=1e-6)  # float rounding

    same = load_target(NAME, weights_dir=mirror, input_size=(160, 160))
    assert isinstance(same.model, NormalizedModel)
    with pytest.raises(TargetError, match="3-channel images, the protocol gives 1 channels"):
        load_target(NAME, weights_dir=mirror, input_size=(1, 64, 64))


def test_entries_without_a_native_size_are_never_resized(isolated_home: Path) -> None:
    spec = TARGETS.get("smoke-cnn-b")
    assert spec.input_size is None
    torch.manual_seed(0)
    net = build_architecture(spec.architecture, spec.num_classes, **spec.arch_kwargs).eval()
    path = isolated_home / spec.source.relpath  # type: ignore[union-attr]
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    assert isinstance(load_target("smoke-cnn-b", input_size=(1, 16, 16)).model, NormalizedModel)


# ----------------------------------------------------------------------------------------------------------------------
# timm pretrained configs and the ImageNet zoo (no weights needed)
# ----------------------------------------------------------------------------------------------------------------------


def test_timm_target_takes_preprocessing_from_the_pretrained_config() -> None:
    spec = timm_target("t", "test_resnet.r160_in1k", family="cnn", citation="c")
    cfg = get_pretrained_cfg("test_resnet.r160_in1k")
    assert (spec.architecture, spec.pretrained_tag, spec.timm_name) == (
        "timm:test_resnet",
        "r160_in1k",
        cfg.hf_hub_id[5:],
    )
    assert (spec.mean, spec.std, spec.input_size, spec.interpolation) == (cfg.mean, cfg.std, cfg.input_size, "bilinear")
    assert spec.num_classes == cfg.num_classes and spec.crop_pct == cfg.crop_pct and spec.license == cfg.license
    assert spec.source == HubWeights(cfg.hf_hub_id, "model.safetensors") and not spec.pinned
    with pytest.raises(ValueError, match=r"no pretrained tag.*test_resnet\.r160_in1k"):
        timm_target("t", "test_resnet", family="cnn", citation="c")  # a bare architecture name is refused
    with pytest.raises(ValueError, match=r"has no weights 'test_resnet\.bogus'"):
        timm_target("t", "test_resnet.bogus", family="cnn", citation="c")
    with pytest.raises(ValueError, match="no architecture 'no_such_net'"):
        timm_target("t", "no_such_net.in1k", family="cnn", citation="c")


EXPECTED_IMAGENET = {
    "imagenet-resnet50": "resnet50.tv_in1k",
    "imagenet-vgg16": "vgg16.tv_in1k",
    "imagenet-densenet121": "densenet121.tv_in1k",
    "imagenet-mobilenetv2": "mobilenetv2_100.ra_in1k",
    "imagenet-inception-v3": "inception_v3.tf_in1k",
    "imagenet-xception": "legacy_xception.tf_in1k",
    "imagenet-vit-b16": "vit_base_patch16_224.augreg_in21k_ft_in1k",
    "imagenet-deit-b": "deit_base_patch16_224.fb_in1k",
    "imagenet-swin-b": "swin_base_patch4_window7_224.ms_in22k_ft_in1k",
    "imagenet-inception-v3-adv": "inception_v3.tf_adv_in1k",
    "imagenet-incres-v2-ens-adv": "inception_resnet_v2.tf_ens_adv_in1k",
    "imagenet-resnet50-linf4": None,  # not timm weights: Salman et al. (2020) on the Hub
}


def test_imagenet_zoo_holds_the_planned_entries() -> None:
    assert set(IMAGENET_TARGETS) == set(EXPECTED_IMAGENET) and set(IMAGENET_TARGETS) <= set(TARGETS)
    assert {n: TARGETS.get(n).timm_name for n in IMAGENET_TARGETS} == EXPECTED_IMAGENET
    families = {n: TARGETS.get(n).family for n in IMAGENET_TARGETS}
    assert {n for n, f in families.items() if f == "adversarially-trained"} == {
        "imagenet-inception-v3-adv", "imagenet-incres-v2-ens-adv", "imagenet-resnet50-linf4"}  # fmt: skip
    assert {n for n, f in families.items() if f == "vit"} == {"imagenet-vit-b16", "imagenet-deit-b", "imagenet-swin-b"}
    assert unpinned_targets(IMAGENET_TARGETS) == list(IMAGENET_TARGETS)  # nothing measured yet: provisional


@pytest.mark.parametrize("name", IMAGENET_TARGETS)
def test_imagenet_entry_matches_the_installed_timm(name: str) -> None:
    spec = TARGETS.get(name)
    arch = spec.architecture.removeprefix("timm:")
    assert spec.architecture.startswith("timm:") and timm.is_model(arch)
    assert spec.num_classes == 1000 and spec.input_size is not None and spec.license and spec.citation
    assert not spec.pinned and "not pinned" in spec.notes and "not pinned" in describe_source(spec)
    if spec.timm_name is None:  # the adversarially trained ResNet-50: a torch checkpoint, prefixes as data
        src = spec.source
        assert isinstance(src, HubWeights) and src.format == "torch" and src.state_key == "model"
        assert src.strip_prefix == "module.model." and src.drop_unprefixed
        assert describe_source(spec).startswith(f"hf://{src.repo_id}/{src.filename}")
        return
    assert spec.timm_name in timm.list_pretrained(f"{arch}.*")
    # the entry is data; this is the installed timm's view of the same weights, field by field
    assert spec == timm_target(name, spec.timm_name, family=spec.family, citation=spec.citation, notes=spec.notes)
    cfg = get_pretrained_cfg(spec.timm_name)
    assert spec.mean == tuple(cfg.mean) and spec.std == tuple(cfg.std)
    assert spec.input_size == tuple(cfg.input_size) and spec.interpolation == cfg.interpolation
    assert spec.crop_pct == cfg.crop_pct and spec.num_classes == cfg.num_classes and not cfg.label_offset
    assert spec.license == cfg.license
    if cfg.hf_hub_id:
        assert spec.source == HubWeights(cfg.hf_hub_id, "model.safetensors")
    else:
        assert isinstance(spec.source, UrlWeights) and spec.source.url == cfg.url and spec.source.sha256 is None


def test_robust_resnet50_entry_fits_torchvision_keys() -> None:
    """The MadryLab checkpoint holds a torchvision ResNet-50 (after its prefix is stripped): the entry's timm
    architecture must have exactly its keys and shapes, or the strict load of the real file would fail."""
    import torchvision

    spec = TARGETS.get("imagenet-resnet50-linf4")
    with torch.device("meta"):
        ours = build_architecture(spec.architecture, spec.num_classes).state_dict()
        theirs = torchvision.models.resnet50(num_classes=1000).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_describe_source_of_a_pinned_entry() -> None:
    src = HubWeights(REPO, revision="a" * 40, sha256="b" * 64)
    spec = dataclasses.replace(TARGETS.get("imagenet-resnet50"), source=src)
    assert spec.pinned
    assert describe_source(spec) == f"hf://{REPO}@{'a' * 12}/model.safetensors (revision {'a' * 12}, sha256 {'b' * 12})"


# ----------------------------------------------------------------------------------------------------------------------
# The test Hub's model repos (what target publishing relies on)
# ----------------------------------------------------------------------------------------------------------------------


def test_model_repos_on_the_test_hub(hub: FakeHub, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.endpoint, token=False)
    url = api.create_repo("org/new-zoo")  # a model repo, as on the Hub when no type is given
    assert url == f"{hub.endpoint}/org/new-zoo" and api.create_repo("org/new-zoo", exist_ok=True) == url
    with pytest.raises(HfHubHTTPError):
        api.create_repo("org/new-zoo")
    api.create_repo("org/new-zoo", repo_type="dataset")  # same id, other type: a separate repo

    folder = tmp_path / "upload"
    (folder / "resnet").mkdir(parents=True)
    (folder / "resnet" / "model.safetensors").write_bytes(b"w1")
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# zoo\n")
    first = api.upload_folder(repo_id="org/new-zoo", folder_path=folder, commit_message="zoo v1")
    assert hub.head("org/new-zoo", repo_type="model") == first.oid
    assert hub.files("org/new-zoo", repo_type="dataset") == {".gitattributes": hub.files(REPO)[".gitattributes"]}
    assert sorted(api.list_repo_files("org/new-zoo")) == [".gitattributes", "README.md", "resnet/model.safetensors"]
    assert api.model_info("org/new-zoo").sha == first.oid

    def op(data: bytes) -> CommitOperationAdd:
        return CommitOperationAdd(path_in_repo="resnet/model.safetensors", path_or_fileobj=data)

    api.create_commit("org/new-zoo", [op(b"w2")], commit_message="v2", parent_commit=first.oid)
    with pytest.raises(HfHubHTTPError) as err:  # the branch moved: a commit on the old parent is refused
        api.create_commit("org/new-zoo", [op(b"w3")], commit_message="v3", parent_commit=first.oid)
    assert err.value.response.status_code == 412
    assert hub.files("org/new-zoo", first.oid, repo_type="model")["resnet/model.safetensors"] == b"w1"
    assert hub.files("org/new-zoo", repo_type="model")["resnet/model.safetensors"] == b"w2"
    assert [c.message for c in hub.history("org/new-zoo", repo_type="model")] == ["v2", "zoo v1", "initial commit"]
    assert api.model_info("org/new-zoo", revision=first.oid).sha == first.oid


def test_the_zoo_and_the_cli_do_not_import_timm_until_a_model_is_built() -> None:
    """Start-up cost: timm (and torchvision) take over a second to import; listing protocols needs neither."""
    code = "import sys, bench.cli, targets; sys.exit(sorted({'timm', 'torchvision'} & set(sys.modules)) or 0)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
