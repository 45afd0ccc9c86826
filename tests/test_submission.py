"""The surrogate submission folder: save/load round trips, groups, hashing, validation errors, pickles, hf://."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_cifar_model, tiny_digits_model
from huggingface_hub.utils import filter_repo_objects

from surrogates import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Ensemble,
    SubmissionError,
    load_surrogate,
    read_config,
    save_group,
    save_surrogate,
)
from surrogates import submission as submission_mod

DIGITS = {"architecture": "small_cnn", "num_classes": 10, "mean": (0.5,), "std": (0.5,), "input_size": (1, 8, 8)}


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _save_digits(out: Path, seed: int = 0, **kwargs: Any) -> Path:
    return save_surrogate(tiny_digits_model(seed), out, **{**DIGITS, **kwargs})


def _x_digits(n: int = 5, seed: int = 123) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit_config(folder: Path, **changes: Any) -> Path:
    """Rewrite config.json with ``changes`` applied (a value of ``...`` deletes the key)."""
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    return folder


def _leftovers(parent: Path) -> list[str]:
    """Hidden entries (the temporary folders of an atomic save) in ``parent``."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------------------------------------------------
# Single checkpoints
# ----------------------------------------------------------------------------------------------------------------------


def test_round_trip_cifar_model(tmp_path: Path) -> None:
    model = tiny_cifar_model(seed=3)
    meta = {"recipe": "pgd-at", "paper": "arXiv:0000.00000", "epochs": 7, "extra": {"lr": [0.1, 0.01]}}
    out = save_surrogate(
        model,  # a NormalizedModel: its bare network is saved
        tmp_path / "sub",
        architecture="cifar_resnet18",
        num_classes=10,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        arch_kwargs={"width": 8},
        metadata=meta,
    )
    assert out == tmp_path / "sub"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    assert _leftovers(tmp_path) == []

    s = load_surrogate(out)
    assert s.kind == "single" and len(s.runs) == 1 and s.run_names == ["sub"] and s.name == "sub"
    assert s.num_classes == 10
    assert s.sha256 == _sha256(out / WEIGHTS_NAME)
    assert s.member_sha256 == {"sub": s.sha256}
    assert s.source == str(out.resolve())
    assert s.config.metadata == meta
    assert s.config.arch_kwargs == {"width": 8}
    assert s.config.mean == (0.5, 0.5, 0.5) and s.config.std == (0.25, 0.25, 0.25)

    loaded = s.runs[0]
    assert not loaded.training
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)

    card = (out / "README.md").read_text()
    assert "cifar_resnet18" in card and "pgd-at" in card
    assert card.startswith("---\n")  # Hub model-card front matter
    cfg = json.loads((out / CONFIG_NAME).read_text())
    assert cfg["architecture"] == "cifar_resnet18" and cfg["kind"] == "single" and cfg["transferbench_format"] == 1


def test_round_trip_bare_network_and_metadata_name(tmp_path: Path) -> None:
    model = tiny_digits_model(seed=1, arch="mlp", hidden=32)
    out = save_surrogate(
        model.net, tmp_path / "folder", **DIGITS | {"architecture": "mlp"}, arch_kwargs={"hidden": 32},
        metadata={"name": "my-mlp"},
    )  # fmt: skip
    s = load_surrogate(str(out))
    assert s.name == "my-mlp" and s.run_names == ["my-mlp"]
    x = _x_digits()
    with torch.no_grad():
        torch.testing.assert_close(s.runs[0](x), model(x), rtol=0, atol=0)
    assert "# my-mlp" in (out / "README.md").read_text()


def test_saved_weights_are_the_bare_network_state_dict(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model = tiny_digits_model(seed=2)
    out = _save_digits(tmp_path / "s", seed=2)
    state = load_file(str(out / WEIGHTS_NAME))
    assert set(state) == set(model.net.state_dict())  # no "net." prefix, no mean/std buffers
    for k, v in model.net.state_dict().items():
        assert torch.equal(state[k], v)


def test_sha256_tracks_weights(tmp_path: Path) -> None:
    a = load_surrogate(_save_digits(tmp_path / "a", seed=0))
    a2 = load_surrogate(_save_digits(tmp_path / "a2", seed=0))
    b = load_surrogate(_save_digits(tmp_path / "b", seed=1))
    assert a.sha256 == a2.sha256  # deterministic serialization
    assert a.sha256 != b.sha256
    assert len(a.sha256) == 64 and int(a.sha256, 16) >= 0


def test_existing_folder_needs_overwrite(tmp_path: Path) -> None:
    out = _save_digits(tmp_path / "s", seed=0)
    before = _sha256(out / WEIGHTS_NAME)
    with pytest.raises(FileExistsError, match="overwrite"):
        _save_digits(out, seed=1)
    assert _sha256(out / WEIGHTS_NAME) == before
    (out / "stale.txt").write_text("from the previous save")
    _save_digits(out, seed=1, overwrite=True)
    assert not (out / "stale.txt").exists()  # replaced, not merged
    s = load_surrogate(out)
    x = _x_digits()
    with torch.no_grad():
        torch.testing.assert_close(s.runs[0](x), tiny_digits_model(1)(x), rtol=0, atol=0)
    assert _leftovers(tmp_path) == []


def _failing_save_file(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("disk full (simulated)")


def test_failed_save_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submission_mod, "save_file", _failing_save_file)
    parent = tmp_path / "parent"
    with pytest.raises(RuntimeError, match="disk full"):
        _save_digits(parent / "s")
    assert not (parent / "s").exists()
    assert list(parent.iterdir()) == []  # no temporary folder either


def test_failed_overwrite_keeps_the_old_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _save_digits(tmp_path / "s", seed=0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(submission_mod, "save_file", _failing_save_file)
    with pytest.raises(RuntimeError, match="disk full"):
        _save_digits(out, seed=1, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []


def test_overwrite_that_fails_at_the_swap_puts_the_old_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old folder is moved aside, not deleted, before the new one moves in: a failed move restores it."""
    out = _save_digits(tmp_path / "s", seed=0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        if ".tmp-" in Path(src).name:  # the new folder moving in
            raise OSError(28, "No space left on device (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        _save_digits(out, seed=1, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------------------------------
# Ensembles and seed groups
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def members(tmp_path: Path) -> dict[str, Path]:
    return {f"seed{i}": _save_digits(tmp_path / "singles" / f"m{i}", seed=i) for i in range(3)}


def test_ensemble_averages_member_logits(tmp_path: Path, members: dict[str, Path]) -> None:
    out = save_group(members, tmp_path / "ens", kind="ensemble", metadata={"recipe": "3 seeds"})
    assert sorted(p.name for p in out.iterdir()) == ["README.md", CONFIG_NAME, "seed0", "seed1", "seed2"]
    assert read_config(out).members == ("seed0", "seed1", "seed2")
    s = load_surrogate(out)
    assert s.kind == "ensemble" and s.name == "ens" and s.run_names == ["ens"] and len(s.runs) == 1
    assert isinstance(s.runs[0], Ensemble) and not s.runs[0].training
    assert s.num_classes == 10
    assert s.config.metadata == {"recipe": "3 seeds"}
    assert s.member_sha256 == {m: _sha256(p / WEIGHTS_NAME) for m, p in members.items()}
    x = _x_digits()
    with torch.no_grad():
        expected = torch.stack([tiny_digits_model(i)(x) for i in range(3)]).mean(0)
        torch.testing.assert_close(s.runs[0](x), expected)
        assert not torch.allclose(s.runs[0](x), tiny_digits_model(0)(x))
    card = (out / "README.md").read_text()
    assert "ensemble" in card and "seed0, seed1, seed2" in card


def test_seed_group_has_one_run_per_member(tmp_path: Path, members: dict[str, Path]) -> None:
    out = save_group(members, tmp_path / "grp", kind="seed-group")
    s = load_surrogate(out)
    assert s.kind == "seed-group"
    assert s.run_names == ["seed0", "seed1", "seed2"]
    assert len(s.runs) == 3 and all(not r.training for r in s.runs)
    x = _x_digits()
    with torch.no_grad():
        for i, run in enumerate(s.runs):
            torch.testing.assert_close(run(x), tiny_digits_model(i)(x), rtol=0, atol=0)
    ens = load_surrogate(save_group(members, tmp_path / "ens", kind="ensemble"))
    assert ens.sha256 != s.sha256  # the kind is part of the identity


def test_config_sha256_covers_the_model_definition_not_the_metadata(tmp_path: Path, members: dict[str, Path]) -> None:
    """Same weights under another mean/std are another model: config_sha256 tells them apart, sha256 does not."""
    a = load_surrogate(_save_digits(tmp_path / "a", metadata={"recipe": "ST"}))
    same = load_surrogate(_save_digits(tmp_path / "same", metadata={"recipe": "other words"}))
    shifted = load_surrogate(_save_digits(tmp_path / "shifted", mean=(0.4,)))
    assert a.sha256 == same.sha256 == shifted.sha256
    assert a.config_sha256 == same.config_sha256 != shifted.config_sha256
    g = load_surrogate(save_group(members, tmp_path / "g", kind="ensemble"))
    cfg_path = tmp_path / "g" / "seed1" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["std"] = [0.25]
    cfg_path.write_text(json.dumps(cfg))
    g2 = load_surrogate(tmp_path / "g")
    assert g2.sha256 == g.sha256 and g2.config_sha256 != g.config_sha256 and len(g.config_sha256) == 64


def test_group_sha256_changes_with_a_member(tmp_path: Path, members: dict[str, Path]) -> None:
    sha = load_surrogate(save_group(members, tmp_path / "g1", kind="ensemble")).sha256
    assert load_surrogate(save_group(members, tmp_path / "g2", kind="ensemble")).sha256 == sha
    changed = dict(members, seed1=_save_digits(tmp_path / "singles" / "other", seed=9))
    assert load_surrogate(save_group(changed, tmp_path / "g3", kind="ensemble")).sha256 != sha
    renamed = {f"x{k}": v for k, v in members.items()}
    assert load_surrogate(save_group(renamed, tmp_path / "g4", kind="ensemble")).sha256 != sha
    # The member's file, not its source path, is what counts: edit a weight in place in a saved group.
    g1 = tmp_path / "g1" / "seed1" / WEIGHTS_NAME
    from safetensors.torch import load_file, save_file

    state = load_file(str(g1))
    state["head.bias"] = state["head.bias"] + 1.0
    save_file(state, str(g1))
    assert load_surrogate(tmp_path / "g1").sha256 != sha


def test_group_rejects_group_members(tmp_path: Path, members: dict[str, Path]) -> None:
    ens = save_group(members, tmp_path / "ens", kind="ensemble")
    with pytest.raises(SubmissionError, match="only single checkpoints"):
        save_group({"inner": ens}, tmp_path / "nested", kind="ensemble")
    assert not (tmp_path / "nested").exists() and _leftovers(tmp_path) == []
    # A hand-made nested group is rejected on load, naming the member's config.json.
    shutil.copytree(ens, tmp_path / "outer" / "inner")
    (tmp_path / "outer" / CONFIG_NAME).write_text(json.dumps({"kind": "seed-group", "members": ["inner"]}))
    with pytest.raises(SubmissionError, match=r"inner/config\.json.*must be single"):
        load_surrogate(tmp_path / "outer")


def test_group_members_must_agree_on_num_classes(tmp_path: Path) -> None:
    a = _save_digits(tmp_path / "a", seed=0)
    torch.manual_seed(0)
    from bench.models import build_model

    b = save_surrogate(build_model("small_cnn", 5, (0.5,), (0.5,)), tmp_path / "b", **DIGITS | {"num_classes": 5})
    out = save_group({"a": a, "b": b}, tmp_path / "g", kind="ensemble")
    with pytest.raises(SubmissionError, match="disagree on num_classes"):
        load_surrogate(out)


@pytest.mark.parametrize("kind", ["ensemble", "seed-group"])
def test_group_members_must_agree_on_input_size(tmp_path: Path, kind: str) -> None:
    """The runner checks one declared input size against the protocol; a group must have exactly one."""
    a = _save_digits(tmp_path / "a", seed=0)
    b = _save_digits(tmp_path / "b", seed=1, input_size=(1, 16, 16))  # small_cnn pools, so it runs at either size
    if kind == "seed-group":  # refused when assembled: seeds of one recipe share the model definition
        with pytest.raises(SubmissionError, match=r"members 'a' and 'b' differ in input_size .*16, 16"):
            save_group({"a": a, "b": b}, tmp_path / "g", kind=kind)
        out = save_group({"a": a, "b": b}, tmp_path / "g", kind="ensemble")  # a hand-made group: load refuses it
        _edit_config(out, kind="seed-group")
        with pytest.raises(SubmissionError, match=r"disagree on input_size .*16, 16"):
            load_surrogate(out)
    else:
        with pytest.raises(SubmissionError, match=r"disagree on input_size .*16, 16"):
            load_surrogate(save_group({"a": a, "b": b}, tmp_path / "g", kind=kind))
    same = load_surrogate(save_group({"a": a, "c": _save_digits(tmp_path / "c", seed=2)}, tmp_path / "h", kind=kind))
    assert {m.input_size for m in same.runs} == {(1, 8, 8)}  # what the runner compares with the protocol


@pytest.mark.parametrize("member", ["../x", "../../x", "sub/../../x", ".", "/tmp"])
def test_member_escaping_the_folder_is_rejected(tmp_path: Path, member: str) -> None:
    single = _save_digits(tmp_path / "x")  # a valid submission exactly where "../x" points
    grp = tmp_path / "grp"
    grp.mkdir()
    (grp / "sub").mkdir()
    (grp / CONFIG_NAME).write_text(json.dumps({"kind": "ensemble", "members": ["ok", member]}))
    shutil.copytree(single, grp / "ok")
    with pytest.raises(SubmissionError, match="must be a sub-folder") as err:
        load_surrogate(grp)
    assert str(grp / CONFIG_NAME) in str(err.value) and repr(member) in str(err.value)


def test_save_group_rejects_member_names_escaping_the_folder(tmp_path: Path) -> None:
    single = _save_digits(tmp_path / "singles" / "a")
    try:
        with pytest.raises((SubmissionError, ValueError)):
            save_group({"../escape": single}, tmp_path / "out" / "grp", kind="ensemble")
    finally:
        escaped = (tmp_path / "out" / "escape").exists()
    assert not escaped, "save_group wrote a member outside the group folder"


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"kind": "ensemble"}, "members"),
        ({"kind": "ensemble", "members": []}, "members"),
        ({"kind": "seed-group", "members": ["a", 3]}, "members"),
        ({"kind": "committee", "members": ["a"]}, "kind"),
    ],
)
def test_group_config_errors(tmp_path: Path, config: dict[str, Any], match: str) -> None:
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(SubmissionError, match=match) as err:
        load_surrogate(tmp_path)
    assert str(tmp_path / CONFIG_NAME) in str(err.value)


# ----------------------------------------------------------------------------------------------------------------------
# Invalid single submissions: every error names the file and the field
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def single(tmp_path: Path) -> Path:
    return _save_digits(tmp_path / "sub", seed=0, arch_kwargs={"width": 16})


def _load_error(folder: Path) -> str:
    with pytest.raises(SubmissionError) as err:
        load_surrogate(folder)
    assert isinstance(err.value, ValueError)
    return str(err.value)


def test_missing_folder(tmp_path: Path) -> None:
    msg = _load_error(tmp_path / "nope")
    assert str(tmp_path / "nope") in msg and "does not exist" in msg


def test_missing_config(single: Path) -> None:
    (single / CONFIG_NAME).unlink()
    msg = _load_error(single)
    assert str(single / CONFIG_NAME) in msg and "not found" in msg


def test_missing_weights(single: Path) -> None:
    (single / WEIGHTS_NAME).unlink()
    msg = _load_error(single)
    assert str(single / WEIGHTS_NAME) in msg and "not found" in msg


@pytest.mark.parametrize("text", ["{not json", "", '{"kind": "single",}'])
def test_invalid_json(single: Path, text: str) -> None:
    (single / CONFIG_NAME).write_text(text)
    msg = _load_error(single)
    assert str(single / CONFIG_NAME) in msg and "not valid JSON" in msg


def test_config_must_be_an_object(single: Path) -> None:
    (single / CONFIG_NAME).write_text("[1, 2]")
    msg = _load_error(single)
    assert str(single / CONFIG_NAME) in msg and "JSON object" in msg


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"architecture": "cifar_resnet2O"}, "architecture"),
        ({"architecture": "timm:not_a_model_xyz"}, "architecture"),
        ({"architecture": ...}, "architecture"),
        ({"architecture": 3}, "architecture"),
        ({"num_classes": "10"}, "num_classes"),
        ({"num_classes": 10.0}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": ...}, "num_classes"),
        ({"input_size": [1, 8]}, "input_size"),
        ({"input_size": [1, 8, 0]}, "input_size"),
        ({"input_size": [True, 8, 8]}, "input_size"),  # JSON true is not 1
        ({"mean": [float("nan")]}, "mean"),  # json writes NaN and reads it back
        ({"std": [float("inf")]}, "std"),
        ({"mean": [True]}, "mean"),
        ({"std": [10**400]}, "std"),  # an integer too large for a float: refused, not an OverflowError
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"std": []}, "std"),
        ({"mean": ...}, "mean"),
        ({"mean": ["a"]}, "mean"),
        ({"std": [0.0]}, "std"),
        ({"std": [-0.5]}, "std"),
        ({"transferbench_format": 2}, "transferbench_format"),
        ({"transferbench_format": 0}, "transferbench_format"),
        ({"kind": "weird"}, "kind"),
    ],
)
def test_invalid_config_field(single: Path, changes: dict[str, Any], field: str) -> None:
    msg = _load_error(_edit_config(single, **changes))
    assert msg.startswith(f"{single / CONFIG_NAME}: ")
    assert field in msg.removeprefix(f"{single / CONFIG_NAME}: ")


@pytest.mark.parametrize("arch", ["small_cnn", "timm:test_resnet"])
@pytest.mark.parametrize("key", ["checkpoint_path", "pretrained", "pretrained_cfg_overlay", "cache_dir"])
def test_arch_kwargs_cannot_make_the_loader_read_files(single: Path, arch: str, key: str) -> None:
    """timm's create_model would torch.load a checkpoint_path: a config must not point it at any file."""
    msg = _load_error(_edit_config(single, architecture=arch, arch_kwargs={key: str(single / "README.md")}))
    assert key in msg and "not allowed" in msg and "model.safetensors" in msg


def test_unknown_architecture_lists_registered_names(single: Path) -> None:
    msg = _load_error(_edit_config(single, architecture="cifar_resnet2O"))
    assert "'cifar_resnet2O'" in msg and "cifar_resnet20" in msg and "timm:" in msg


def test_num_classes_disagreeing_with_checkpoint(single: Path) -> None:
    msg = _load_error(_edit_config(single, num_classes=100))
    assert str(single / WEIGHTS_NAME) in msg
    assert "shape mismatch" in msg and "head.weight" in msg and "(10, 128)" in msg and "(100, 128)" in msg


def test_arch_kwargs_disagreeing_with_checkpoint(single: Path) -> None:
    msg = _load_error(_edit_config(single, arch_kwargs={"width": 8}))
    assert str(single / WEIGHTS_NAME) in msg and "shape mismatch" in msg and "width" in msg


def test_wrong_architecture_for_checkpoint(single: Path) -> None:
    msg = _load_error(_edit_config(single, architecture="mlp", arch_kwargs={}))
    assert str(single / WEIGHTS_NAME) in msg and "missing" in msg and "unexpected" in msg


def test_missing_and_extra_tensors(single: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(single / WEIGHTS_NAME))
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(single / WEIGHTS_NAME))
    msg = _load_error(single)
    assert str(single / WEIGHTS_NAME) in msg and "head.bias" in msg and "extra.weight" in msg


def test_unknown_arch_kwarg_is_a_submission_error(single: Path) -> None:
    msg = _load_error(_edit_config(single, arch_kwargs={"widht": 16}))
    assert str(single / CONFIG_NAME) in msg and "arch_kwargs" in msg


@pytest.mark.parametrize(("field", "value"), [("arch_kwargs", [1, 2]), ("metadata", "abc"), ("metadata", 5)])
def test_non_object_arch_kwargs_or_metadata(single: Path, field: str, value: Any) -> None:
    msg = _load_error(_edit_config(single, **{field: value}))
    assert str(single / CONFIG_NAME) in msg and field in msg


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _header_only(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:6])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("corrupt", [_random_bytes, _truncate, _header_only, _empty])
def test_corrupted_weights(single: Path, corrupt: Any) -> None:
    corrupt(single / WEIGHTS_NAME)
    msg = _load_error(single)
    assert str(single / WEIGHTS_NAME) in msg and "not a readable safetensors file" in msg


class _Sentinel:
    """Unpickling this object would create ``path``: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (os.mkdir, (str(self.path),))


@pytest.mark.parametrize("zipfile", [True, False])
def test_pickle_disguised_as_safetensors_is_never_unpickled(single: Path, tmp_path: Path, zipfile: bool) -> None:
    marker = tmp_path / "PWNED"
    weights = single / WEIGHTS_NAME
    torch.save({"net": _Sentinel(marker)}, weights, _use_new_zipfile_serialization=zipfile)
    # Sanity check that the payload is live: a plain (unsafe) unpickle does run it.
    probe = tmp_path / "probe.pt"
    torch.save({"net": _Sentinel(tmp_path / "PROBE")}, probe, _use_new_zipfile_serialization=zipfile)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "PROBE").exists()

    msg = _load_error(single)
    assert str(weights) in msg and "safetensors" in msg
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------------------
# hf:// locations
# ----------------------------------------------------------------------------------------------------------------------


class _FakeSnapshot:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        assert not args, "repo_id and friends should be passed by keyword"
        self.calls.append(kwargs)
        return str(self.folder)


def _fake_hub(monkeypatch: pytest.MonkeyPatch, folder: Path) -> _FakeSnapshot:
    import huggingface_hub

    fake = _FakeSnapshot(folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFERBENCH_OFFLINE"])
def test_hf_location_offline_reads_only_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls: list[dict[str, Any]] = []

    def not_cached(**kwargs: Any) -> str:
        calls.append(kwargs)
        raise LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    monkeypatch.setenv(var, "1")
    with pytest.raises(SubmissionError, match=rf"hf://owner/repo@v2 is not in the Hugging Face cache .*{var}"):
        load_surrogate("hf://owner/repo@v2")
    assert calls[0]["local_files_only"] is True and calls[0]["revision"] == "v2"


def test_hf_location_that_is_no_repo_id_is_a_submission_error() -> None:
    with pytest.raises(SubmissionError, match=r"hf://bad repo!!/x is not a valid Hub location .*hf://owner/repo"):
        load_surrogate("hf://bad repo!!/x")


def test_hf_location_download_failure_names_the_location_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def refused(**kwargs: Any) -> str:
        assert kwargs["local_files_only"] is False
        raise ConnectionError("Failed to resolve 'huggingface.co'\n(traceback detail)")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refused)
    with pytest.raises(SubmissionError) as err:
        load_surrogate("hf://owner/missing")
    msg = str(err.value)
    assert "hf://owner/missing could not be downloaded (ConnectionError: Failed to resolve" in msg
    assert "traceback detail" not in msg and "copy the submission folder here" in msg


def test_hf_location_with_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = _save_digits(tmp_path / "snapshots" / "abc123", seed=4, metadata={"name": "hub-model"})
    fake = _fake_hub(monkeypatch, snap)
    s = load_surrogate("hf://owner/repo@abc123")
    assert len(fake.calls) == 1
    call = fake.calls[0]
    assert call["repo_id"] == "owner/repo"
    assert call["revision"] == "abc123"
    assert s.source == "hf://owner/repo@abc123"
    assert s.name == "hub-model"
    assert s.sha256 == _sha256(snap / WEIGHTS_NAME)
    x = _x_digits()
    with torch.no_grad():
        torch.testing.assert_close(s.runs[0](x), tiny_digits_model(4)(x), rtol=0, atol=0)

    patterns = call["allow_patterns"]
    assert patterns, "snapshot_download must be restricted to safe files"
    for p in patterns:
        assert not any(bad in p for bad in (".bin", ".pt", ".py", ".pkl", ".ckpt", ".th")) and p != "*"
    wanted = [CONFIG_NAME, WEIGHTS_NAME, "README.md", f"m0/{CONFIG_NAME}", f"m0/{WEIGHTS_NAME}"]
    unsafe = ["pytorch_model.bin", "model.pt", "model.pth", "modeling.py", "x.pkl", "m0/model.ckpt", "r.th", "a.npy"]
    assert sorted(filter_repo_objects(wanted + unsafe, allow_patterns=patterns)) == sorted(wanted)


def test_hf_location_without_revision_records_the_resolved_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = "4c2f" * 10
    fake = _fake_hub(monkeypatch, _save_digits(tmp_path / "snapshots" / commit, metadata={"name": "n"}))
    s = load_surrogate("hf://owner/repo")
    assert fake.calls[0]["repo_id"] == "owner/repo"
    assert fake.calls[0]["revision"] is None
    assert s.source == f"hf://owner/repo@{commit}"  # main moves; the commit that was read does not


def test_hf_location_outside_a_cache_snapshot_keeps_the_revision_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_hub(monkeypatch, _save_digits(tmp_path / "snap", metadata={"name": "n"}))
    assert load_surrogate("hf://owner/repo").source == "hf://owner/repo@main"
    assert load_surrogate("hf://owner/repo@v1").source == "hf://owner/repo@v1"


def test_hf_group_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, members: dict[str, Path]) -> None:
    snap = save_group(members, tmp_path / "snapshots" / "0f0f", kind="seed-group", metadata={"name": "g"})
    fake = _fake_hub(monkeypatch, snap)
    s = load_surrogate("hf://team/group@0f0f")
    assert fake.calls[0]["repo_id"] == "team/group" and fake.calls[0]["revision"] == "0f0f"
    assert s.kind == "seed-group" and s.run_names == ["seed0", "seed1", "seed2"]


def test_hf_surrogate_without_metadata_name_is_named_after_the_repo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    _fake_hub(monkeypatch, _save_digits(tmp_path / "models--owner--repo" / "snapshots" / commit))
    s = load_surrogate(f"hf://owner/repo@{commit}")
    assert "repo" in s.name and commit not in s.name


def test_a_seed_group_holds_one_recipe_that_differs_in_the_seed_only(tmp_path: Path) -> None:
    def member(name: str, seed: int, **meta: Any) -> Path:
        hyper = {"epochs": 12, "lr": 0.05, "seed": seed, **meta.pop("hyper", {})}
        return _save_digits(tmp_path / name, seed=seed, metadata={"recipe": "st", "hyperparameters": hyper, **meta})

    s0, s1, s2 = member("s0", 0), member("s1", 1), member("s2", 2)
    group = load_surrogate(save_group({"s0": s0, "s1": s1, "s2": s2}, tmp_path / "ok", kind="seed-group"))
    assert group.kind == "seed-group" and len(group.runs) == 3
    sam = member("sam", 3, recipe="sam")
    with pytest.raises(SubmissionError, match=r"'s0' and 'sam' come from different recipes \('st' vs 'sam'\)"):
        save_group({"s0": s0, "sam": sam}, tmp_path / "g1", kind="seed-group")
    longer = member("longer", 4, hyper={"epochs": 30})
    with pytest.raises(SubmissionError, match=r"different hyperparameters \['epochs'\]; only the seed may differ"):
        save_group({"s0": s0, "longer": longer}, tmp_path / "g2", kind="seed-group")
    laid_out = member("laid-out", 7, hyper={"channels_last": True})  # a memory layout, not another recipe
    assert save_group({"s0": s0, "laid-out": laid_out}, tmp_path / "g5", kind="seed-group").is_dir()
    wider = _save_digits(tmp_path / "wider", seed=5, arch_kwargs={"width": 16})
    with pytest.raises(SubmissionError, match="differ in arch_kwargs"):
        save_group({"s0": s0, "wider": wider}, tmp_path / "g3", kind="seed-group")
    assert save_group({"s0": s0, "sam": sam, "wider": wider}, tmp_path / "ens", kind="ensemble").is_dir()  # any mix
    external = _save_digits(tmp_path / "external", seed=6)  # no recorded recipe: nothing to compare it with
    assert save_group({"s0": s0, "external": external}, tmp_path / "g4", kind="seed-group").is_dir()
    for p in ("g1", "g2", "g3"):
        assert not (tmp_path / p).exists()  # refused before anything was written


def test_a_seed_group_with_the_same_checkpoint_twice_is_refused(tmp_path: Path) -> None:
    """One checkpoint counted twice would halve the seed-to-seed spread a recipe-level comparison relies on."""
    a = _save_digits(tmp_path / "a", seed=0)
    members = {"a": a, "again": a, "b": _save_digits(tmp_path / "b", seed=1)}
    with pytest.raises(SubmissionError, match=r"members \['a', 'again'\] hold identical weights"):
        save_group(members, tmp_path / "g", kind="seed-group")
    assert not (tmp_path / "g").exists()
    out = save_group(members, tmp_path / "g", kind="ensemble")  # a hand-made seed group: load refuses it too
    (out / CONFIG_NAME).write_text((out / CONFIG_NAME).read_text().replace('"ensemble"', '"seed-group"'))
    with pytest.raises(SubmissionError, match=r"members \['a', 'again'\] of the seed group hold identical weights"):
        load_surrogate(out)
