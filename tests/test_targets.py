"""The target zoo: pinned downloads into the cache (file:// URLs, no network), sha256 checks, mirrors, offline
mode, the smoke targets' local weights, registry hygiene, and the shared akamaster checkpoints (slow)."""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from bench.hashing import HashMismatch
from bench.models import NormalizedModel, build_architecture, build_model, known_architecture
from targets import TARGETS, LoadedTarget, TargetError, TargetSpec, UrlWeights, load_target, load_targets
from targets.zoo import HubWeights, LocalWeights, resolve_weights

BASE = TARGETS.get("akamaster-resnet20")
HEX64 = re.compile(r"[0-9a-f]{64}")


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclasses.dataclass
class Checkpoint:
    path: Path
    sha256: str
    net: torch.nn.Module


def _write_checkpoint(path: Path, seed: int = 0, depth: int = 20) -> Checkpoint:
    """An akamaster-style file: {"state_dict": {"module." + name: tensor}, "best_prec1": ...}."""
    torch.manual_seed(seed)
    net = build_architecture(f"cifar_resnet{depth}", 10).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a wrong load would show in the outputs
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "best_prec1": 12.5}, path)
    return Checkpoint(path, _sha256(path), net)


@pytest.fixture
def ckpt(tmp_path: Path) -> Checkpoint:
    return _write_checkpoint(tmp_path / "server" / "tiny-resnet20.th")


def _spec(url: str, sha256: str, name: str = "test-tiny-resnet20", filename: str = "tiny-resnet20.th") -> TargetSpec:
    return dataclasses.replace(BASE, name=name, source=UrlWeights(url, filename, sha256, "state_dict", "module."))


def _register(monkeypatch: pytest.MonkeyPatch, spec: TargetSpec) -> TargetSpec:
    monkeypatch.setitem(TARGETS._items, spec.name, spec)
    return spec


def _cache(home: Path) -> Path:
    return home / "weights"


def _cache_files(home: Path) -> list[str]:
    cache = _cache(home)
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every download (the real one still runs: the URLs are file://)."""
    calls: list[str] = []
    real = torch.hub.download_url_to_file

    def recording(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        calls.append(url)
        real(url, dst, *args, **kwargs)

    monkeypatch.setattr(torch.hub, "download_url_to_file", recording)
    return calls


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails loudly on any download attempt, and records it."""
    calls: list[str] = []

    def forbidden(url: str, *args: Any, **kwargs: Any) -> None:
        calls.append(url)
        raise AssertionError(f"unexpected download of {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", forbidden)
    return calls


def _expected_model(ckpt: Checkpoint) -> NormalizedModel:
    return NormalizedModel(ckpt.net, BASE.mean, BASE.std).eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Download into the cache
# ----------------------------------------------------------------------------------------------------------------------


def test_download_lands_in_cache_verified_and_is_reused(
    ckpt: Checkpoint, isolated_home: Path, downloads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _register(monkeypatch, _spec(ckpt.path.as_uri(), ckpt.sha256))
    path, sha = resolve_weights(spec)
    assert path == _cache(isolated_home) / "tiny-resnet20.th"
    assert sha == ckpt.sha256 == _sha256(path)
    assert path.read_bytes() == ckpt.path.read_bytes()
    assert downloads == [ckpt.path.as_uri()]
    assert _cache_files(isolated_home) == ["tiny-resnet20.th"]  # no temporary files left

    # Second call: served from the cache, even once the source is gone.
    ckpt.path.unlink()
    assert resolve_weights(spec) == (path, ckpt.sha256)
    target = load_target(spec.name)
    assert downloads == [ckpt.path.as_uri()]
    assert isinstance(target, LoadedTarget)
    assert target.name == spec.name and target.sha256 == ckpt.sha256 and target.family == "external"
    assert target.source == ckpt.path.as_uri()
    assert not target.model.training
    assert not any(m.training for m in target.model.modules())
    _same_outputs(target.model, _expected_model(ckpt))


def test_load_target_downloads_on_first_use(
    ckpt: Checkpoint, isolated_home: Path, downloads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _register(monkeypatch, _spec(ckpt.path.as_uri(), ckpt.sha256))
    loaded = load_targets([spec.name])
    assert list(loaded) == [spec.name]
    assert downloads == [ckpt.path.as_uri()]
    assert _cache_files(isolated_home) == ["tiny-resnet20.th"]
    _same_outputs(loaded[spec.name].model, _expected_model(ckpt))


def test_wrong_sha256_raises_and_leaves_nothing_in_cache(
    ckpt: Checkpoint, isolated_home: Path, downloads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned = "0" * 64
    spec = _register(monkeypatch, _spec(ckpt.path.as_uri(), pinned))
    with pytest.raises(HashMismatch) as err:
        load_target(spec.name)
    msg = str(err.value)
    assert "tiny-resnet20.th" in msg and ckpt.sha256 in msg and pinned in msg and spec.name in msg
    assert ckpt.path.as_uri() in msg  # where it came from
    assert downloads == [ckpt.path.as_uri()]
    assert _cache_files(isolated_home) == []


def test_corrupted_cache_file_is_detected(ckpt: Checkpoint, isolated_home: Path, no_download: list[str]) -> None:
    spec = _spec(ckpt.path.as_uri(), ckpt.sha256)
    cached = _cache(isolated_home) / "tiny-resnet20.th"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(ckpt.path.read_bytes()[:-10])
    with pytest.raises(HashMismatch) as err:
        resolve_weights(spec)
    assert str(cached) in str(err.value) and ckpt.sha256 in str(err.value) and _sha256(cached) in str(err.value)
    assert no_download == []


@pytest.mark.parametrize("page", [b"<!DOCTYPE html><html><body>Sign in</body></html>", b"\n  <html><head>"])
def test_html_page_instead_of_weights(
    tmp_path: Path, isolated_home: Path, downloads: list[str], monkeypatch: pytest.MonkeyPatch, page: bytes
) -> None:
    served = tmp_path / "server" / "page.th"
    served.parent.mkdir()
    served.write_bytes(page)
    spec = _register(monkeypatch, _spec(served.as_uri(), _sha256(served)))  # even with a matching hash
    with pytest.raises(TargetError, match="HTML") as err:
        load_target(spec.name)
    assert spec.name in str(err.value) and served.as_uri() in str(err.value)
    assert len(downloads) == 1
    assert _cache_files(isolated_home) == []


def test_html_page_in_mirror(tmp_path: Path, ckpt: Checkpoint, no_download: list[str]) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "tiny-resnet20.th").write_text("<!doctype html>\n<title>404</title>")
    with pytest.raises(TargetError, match="HTML") as err:
        resolve_weights(_spec(ckpt.path.as_uri(), ckpt.sha256), weights_dir=mirror)
    assert str(mirror / "tiny-resnet20.th") in str(err.value)


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (b'{"error": "Repository not found"}', "a JSON document"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 1067\n", "a Git LFS pointer file"),
        (b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>", "an XML document"),
        (b"<!-- proxy --><p>blocked</p>", "an HTML page"),
        ("<html><body>Anmelden</body></html>".encode("utf-16"), "an HTML page"),  # UTF-16 with its mark
        (codecs.BOM_UTF8 + b"<!DOCTYPE html>", "an HTML page"),
    ],
)
def test_web_answers_of_every_kind_are_named(tmp_path: Path, ckpt: Checkpoint, answer: bytes, kind: str) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "tiny-resnet20.th").write_bytes(answer)
    with pytest.raises(TargetError, match=f"is {kind}, not a checkpoint") as err:
        resolve_weights(_spec(ckpt.path.as_uri(), ckpt.sha256), weights_dir=mirror)
    assert str(mirror / "tiny-resnet20.th") in str(err.value) and "--weights-dir" in str(err.value)


def test_real_checkpoint_formats_are_not_taken_for_web_answers(tmp_path: Path, ckpt: Checkpoint) -> None:
    """safetensors (little-endian length first), torch zip files and legacy pickles are binary from byte one."""
    from safetensors.torch import save_file

    from targets.zoo import _PROBE_BYTES, _text_kind

    save_file({"w": torch.ones(3)}, str(tmp_path / "m.safetensors"))
    torch.save({"w": torch.ones(3)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for path in (ckpt.path, tmp_path / "m.safetensors", tmp_path / "legacy.pt"):
        assert _text_kind(path.read_bytes()[:_PROBE_BYTES]) is None, path
    assert _text_kind(b"plain words, not a web answer") is None  # left to the sha256 check and the loader


def test_failed_download_names_url_and_fix(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = (tmp_path / "nowhere" / "tiny-resnet20.th").as_uri()
    spec = _register(monkeypatch, _spec(gone, "a" * 64))
    with pytest.raises(TargetError) as err:
        load_target(spec.name)
    assert gone in str(err.value) and "--weights-dir" in str(err.value)
    assert _cache_files(isolated_home) == []


def test_checkpoint_without_state_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, downloads: list[str]) -> None:
    path = tmp_path / "plain.th"
    torch.save({"model": {}}, path)
    spec = _register(monkeypatch, _spec(path.as_uri(), _sha256(path), filename="plain.th"))
    with pytest.raises(TargetError, match="'state_dict'") as err:
        load_target(spec.name)
    assert "plain.th" in str(err.value)


def test_checkpoint_of_another_architecture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, downloads: list[str]
) -> None:
    other = _write_checkpoint(tmp_path / "r32.th", depth=32)
    spec = _register(monkeypatch, _spec(other.path.as_uri(), other.sha256, filename="r32.th"))
    with pytest.raises(TargetError) as err:
        load_target(spec.name)
    msg = str(err.value)
    assert spec.name in msg and "r32.th" in msg and "unexpected" in msg and "cifar_resnet20" in msg


class _Sentinel:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (os.mkdir, (str(self.path),))


def test_pinned_pickle_is_loaded_weights_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, downloads: list[str]
) -> None:
    """Even a file whose hash matches is unpickled with weights_only=True: code in it never runs."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.th"
    torch.save({"state_dict": {"x": _Sentinel(marker)}}, path)
    spec = _register(monkeypatch, _spec(path.as_uri(), _sha256(path), filename="evil.th"))
    with pytest.raises(TargetError, match="not a loadable checkpoint") as err:
        load_target(spec.name)
    assert "evil.th" in str(err.value) and "convert its state dict to safetensors" in str(err.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------------------
# Offline mode and mirrors
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("TRANSFERBENCH_OFFLINE", "1"),
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFERBENCH_OFFLINE", "true"),
        ("HF_HUB_OFFLINE", "YES"),
    ],
)
def test_offline_without_mirror(
    ckpt: Checkpoint,
    isolated_home: Path,
    no_download: list[str],
    monkeypatch: pytest.MonkeyPatch,
    var: str,
    value: str,
) -> None:
    monkeypatch.setenv(var, value)
    spec = _register(monkeypatch, _spec(ckpt.path.as_uri(), ckpt.sha256))
    with pytest.raises(TargetError) as err:
        load_target(spec.name)
    msg = str(err.value)
    assert "--weights-dir" in msg and "TRANSFERBENCH_WEIGHTS_DIR" in msg
    assert "tiny-resnet20.th" in msg and ckpt.sha256 in msg and ckpt.path.as_uri() in msg
    assert no_download == []
    assert _cache_files(isolated_home) == []


def test_offline_hf_hub_on(ckpt: Checkpoint, no_download: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "ON")
    with pytest.raises(TargetError, match="--weights-dir"):
        resolve_weights(_spec(ckpt.path.as_uri(), ckpt.sha256))
    assert no_download == []


@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize("via", ["argument", "env"])
def test_mirror_is_used(
    tmp_path: Path,
    isolated_home: Path,
    no_download: list[str],
    monkeypatch: pytest.MonkeyPatch,
    via: str,
    offline: bool,
) -> None:
    mirror = tmp_path / "mirror"
    ck = _write_checkpoint(mirror / "tiny-resnet20.th", seed=5)
    dead_url = (tmp_path / "not-served" / "tiny-resnet20.th").as_uri()
    spec = _register(monkeypatch, _spec(dead_url, ck.sha256))
    if offline:
        monkeypatch.setenv("TRANSFERBENCH_OFFLINE", "1")
    kwargs: dict[str, Any] = {}
    if via == "argument":
        kwargs["weights_dir"] = str(mirror)
    else:
        monkeypatch.setenv("TRANSFERBENCH_WEIGHTS_DIR", str(mirror))
    assert resolve_weights(spec, **kwargs) == (mirror / "tiny-resnet20.th", ck.sha256)
    target = load_target(spec.name, **kwargs)
    assert target.sha256 == ck.sha256
    _same_outputs(target.model, _expected_model(ck))
    assert no_download == []
    assert _cache_files(isolated_home) == []  # a mirror is read in place, not copied


def test_mirror_argument_wins_over_env(tmp_path: Path, no_download: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    arg_mirror, env_mirror = tmp_path / "arg", tmp_path / "env"
    ck = _write_checkpoint(arg_mirror / "tiny-resnet20.th", seed=1)
    env_mirror.mkdir()
    (env_mirror / "tiny-resnet20.th").write_bytes(b"tampered")
    monkeypatch.setenv("TRANSFERBENCH_WEIGHTS_DIR", str(env_mirror))
    spec = _spec("file:///nonexistent/tiny-resnet20.th", ck.sha256)
    assert resolve_weights(spec, weights_dir=arg_mirror)[0] == arg_mirror / "tiny-resnet20.th"
    with pytest.raises(HashMismatch, match=re.escape(str(env_mirror / "tiny-resnet20.th"))):
        resolve_weights(spec)


def test_tampered_mirror_file_is_rejected(tmp_path: Path, ckpt: Checkpoint, no_download: list[str]) -> None:
    mirror = tmp_path / "mirror"
    other = _write_checkpoint(mirror / "tiny-resnet20.th", seed=7)
    with pytest.raises(HashMismatch) as err:
        resolve_weights(_spec(ckpt.path.as_uri(), ckpt.sha256), weights_dir=mirror)
    msg = str(err.value)
    assert str(mirror / "tiny-resnet20.th") in msg and other.sha256 in msg and ckpt.sha256 in msg


def test_mirror_without_the_file_falls_back_to_download(
    tmp_path: Path, ckpt: Checkpoint, isolated_home: Path, downloads: list[str]
) -> None:
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    path, sha = resolve_weights(_spec(ckpt.path.as_uri(), ckpt.sha256), weights_dir=empty)
    assert path == _cache(isolated_home) / "tiny-resnet20.th" and sha == ckpt.sha256
    assert downloads == [ckpt.path.as_uri()]


# ----------------------------------------------------------------------------------------------------------------------
# Smoke targets (LocalWeights under TRANSFERBENCH_HOME)
# ----------------------------------------------------------------------------------------------------------------------


def test_missing_local_weights_tells_to_run_the_demo(isolated_home: Path) -> None:
    with pytest.raises(TargetError) as err:
        load_target("smoke-cnn-a")
    msg = str(err.value)
    assert "transferbench demo" in msg and "smoke-cnn-a" in msg
    assert str(isolated_home / "demo" / "targets" / "smoke-cnn-a.safetensors") in msg


def test_local_weights_load(isolated_home: Path) -> None:
    spec = TARGETS.get("smoke-cnn-b")
    assert isinstance(spec.source, LocalWeights)
    torch.manual_seed(0)
    net = build_architecture(spec.architecture, spec.num_classes, **spec.arch_kwargs).eval()
    path = isolated_home / spec.source.relpath
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    target = load_target("smoke-cnn-b")
    assert target.sha256 == _sha256(path) and target.source == str(path) and target.family == "smoke"
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(target.model(x), net((x - 0.5) / 0.5), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Every registered target
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TARGETS))
def test_registered_target_is_well_formed(name: str) -> None:
    spec = TARGETS.get(name)
    assert spec.name == name
    assert spec.family in ("cnn", "vit", "adversarially-trained", "external", "smoke")
    assert known_architecture(spec.architecture)
    assert isinstance(spec.num_classes, int) and spec.num_classes >= 2
    assert len(spec.mean) == len(spec.std) >= 1 and all(s > 0 for s in spec.std)
    src = spec.source
    if isinstance(src, UrlWeights):
        assert src.sha256 is None or HEX64.fullmatch(src.sha256), src.sha256  # None: not measured, not pinned
        assert src.url.startswith("https://")
        assert src.url.rsplit("/", 1)[1] == src.filename
        assert spec.pinned == (src.sha256 is not None)
    elif isinstance(src, HubWeights):
        assert src.sha256 is None or HEX64.fullmatch(src.sha256), src.sha256
        assert src.revision is None or re.fullmatch(r"[0-9a-f]{40}", src.revision), src.revision  # a commit
        assert spec.pinned == (src.sha256 is not None and src.revision is not None)
    else:
        assert isinstance(src, LocalWeights) and not Path(src.relpath).is_absolute() and not spec.pinned
    if spec.family == "external":
        assert spec.license.strip() and spec.citation.strip()
    if spec.input_size is not None:
        assert spec.input_size[0] == len(spec.mean)
    # The entry can be built (architecture, num_classes and arch_kwargs agree); on the meta device, so that the
    # ImageNet-size models cost no memory and no random initialisation.
    with torch.device("meta"):
        model = build_model(spec.architecture, spec.num_classes, spec.mean, spec.std, **spec.arch_kwargs)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_registered_files_and_hashes_are_unique() -> None:
    urls = [s.source for _, s in TARGETS.items() if isinstance(s.source, UrlWeights)]
    assert len({u.filename for u in urls}) == len(urls)
    pinned = [u.sha256 for u in urls if u.sha256 is not None]
    assert len(set(pinned)) == len(pinned)
    assert {f"akamaster-resnet{d}" for d in (20, 32, 44, 56)} <= set(TARGETS)


# ----------------------------------------------------------------------------------------------------------------------
# The shared akamaster checkpoints
# ----------------------------------------------------------------------------------------------------------------------

AKAMASTER = [n for n in TARGETS if n.startswith("akamaster-")]


@pytest.mark.slow
@pytest.mark.parametrize("name", AKAMASTER)
def test_akamaster_from_shared_mirror(
    name: str, shared_weights: Path, isolated_home: Path, no_download: list[str]
) -> None:
    spec = TARGETS.get(name)
    mirror_file = shared_weights / spec.source.filename
    assert _sha256(mirror_file) == spec.source.sha256
    target = load_target(name, weights_dir=shared_weights)
    assert target.sha256 == spec.source.sha256
    assert target.source == spec.source.url
    assert not any(m.training for m in target.model.modules())
    assert no_download == [] and _cache_files(isolated_home) == []
    with torch.no_grad():
        out = target.model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
