"""Reference numerics (bench/numerics.py): every protocol's attacks and metrics still compute the pinned numbers,
and a change to how an attack or a metric computes is caught even though no protocol hash moves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench import numerics
from bench.attacks import parts
from bench.metrics import sharpness
from bench.protocol import PROTOCOLS, get_protocol

SMOKE = get_protocol("smoke-digits")


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_every_protocol_reproduces_its_pinned_numerics(name: str) -> None:
    drifts = numerics.check([PROTOCOLS.get(name)])
    assert not drifts, numerics.drift_report(drifts)


def test_the_pins_cover_every_protocol_at_its_hash_and_their_digests_are_intact() -> None:
    pins = numerics.load_pins()
    assert set(pins) == {PROTOCOLS.get(n).id for n in PROTOCOLS}
    for name in PROTOCOLS:
        entry = numerics.pinned_entry(PROTOCOLS.get(name), pins)
        assert entry["digest"] == numerics.digest(entry["values"])
        assert numerics.numerics_digest(PROTOCOLS.get(name)) == entry["digest"]


def test_a_change_in_an_attack_moves_only_its_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    """DIM drawing its resize with another probability: the kind of change that once moved numbers silently."""
    original = parts.DiverseInputs.__init__

    def more_diverse(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        object.__setattr__(self, "p", 0.9)  # a frozen dataclass

    monkeypatch.setattr(parts.DiverseInputs, "__init__", more_diverse)
    drifts = numerics.check([SMOKE])
    moved = {d.key.split(".")[0] for d in drifts}
    assert moved and all(k.startswith("dim/") for k in moved), moved
    assert {"dim/linf-32/untargeted", "dim/linf-32/targeted"} <= moved
    report = numerics.drift_report(drifts)
    assert "smoke-digits-v2 (frozen)" in report and "new version" in report


def test_a_change_in_a_metric_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hutchinson with Gaussian instead of Rademacher probes: also unbiased, but other numbers."""
    original = sharpness._random_like
    monkeypatch.setattr(sharpness, "_random_like", lambda params, gen, kind: original(params, gen, "gaussian"))
    keys = {d.key for d in numerics.check([SMOKE])}
    assert "weight_sharpness.trace" in keys
    assert not any(k.startswith(("smoothness", "similarity", "dim/", "pgd/")) for k in keys)


def test_values_within_tolerance_pass_and_integers_must_match() -> None:
    pinned = {"pgd/linf-8/untargeted.sum": 100.0, "smoothness.eigenvalue[0]": 2.0, "smoothness.iterations": 7,
              "pgd/linf-8/untargeted.success[0]": True, "similarity.t[0]": None}  # fmt: skip
    same = {**pinned, "pgd/linf-8/untargeted.sum": 100.0 * (1 + 1e-12), "smoothness.eigenvalue[0]": 2.0 * (1 + 5e-7)}
    assert numerics.compare("p-v1", pinned, same) == []
    moved = {**pinned, "pgd/linf-8/untargeted.sum": 100.0 * (1 + 1e-6), "smoothness.iterations": 8,
             "pgd/linf-8/untargeted.success[0]": False, "similarity.t[0]": 0.5, "extra": 1}  # fmt: skip
    moved.pop("smoothness.eigenvalue[0]")
    keys = {d.key: d for d in numerics.compare("p-v1", pinned, moved)}
    assert set(keys) == {"pgd/linf-8/untargeted.sum", "smoothness.iterations", "pgd/linf-8/untargeted.success[0]",
                         "similarity.t[0]", "extra", "smoothness.eigenvalue[0]"}  # fmt: skip
    assert keys["smoothness.eigenvalue[0]"].got is None and keys["extra"].pinned is None


def test_reference_inputs_are_images_and_the_models_disagree_between_images() -> None:
    for name in PROTOCOLS:
        p = PROTOCOLS.get(name)
        x, ids = numerics.reference_images(p)
        assert x.shape == (numerics.IMAGES, *p.input_size) and x.dtype == torch.float64
        assert float(x.min()) >= 0 and float(x.max()) <= 1 and torch.equal(torch.round(x * 255) / 255, x)
        assert ids.tolist() == list(p.image_ids[: numerics.IMAGES])
        with torch.no_grad():
            pred = numerics.reference_model(p.input_size, p.num_classes, numerics.SEED)(x).argmax(1)
        assert len(set(pred.tolist())) >= 2, f"{name}: a degenerate reference model predicts one class everywhere"


def test_missing_corrupt_and_stale_pins_are_named_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(numerics.PinsError, match=r"missing\. The file ships with the package: reinstall"):
        numerics.load_pins(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(numerics.PinsError, match=r"bad\.json: unreadable"):
        numerics.load_pins(bad)
    bad.write_text(json.dumps({"format": 99, "protocols": {}}))
    with pytest.raises(numerics.PinsError, match="not a format-1 pins file"):
        numerics.load_pins(bad)
    with pytest.raises(numerics.PinsError, match="smoke-digits-v2 has no reference numerics"):
        numerics.pinned_entry(SMOKE, {})
    with pytest.raises(numerics.PinsError, match=r"made for protocol hash 0{12}.*protocol changed"):
        numerics.pinned_entry(SMOKE, {SMOKE.id: {"sha256": "0" * 64, "values": {}}})


def test_a_protocol_without_pins_has_no_digest() -> None:
    import dataclasses

    changed = dataclasses.replace(SMOKE, smoothness_iters=21)
    assert numerics.numerics_digest(changed) is None
    assert numerics.numerics_digest(SMOKE) is not None


def test_non_finite_values_are_pinned_as_null() -> None:
    assert numerics._json_safe({"a": math.nan, "b": 1.0}) == {"a": None, "b": 1.0}


def test_selfcheck_reports_ok_and_a_drift_with_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.cli import main

    assert main(["selfcheck", "--protocol", "smoke-digits"]) == 0
    out = capsys.readouterr().out
    assert "smoke-digits-v2" in out and "ok" in out and "selfcheck passed" in out
    original = sharpness._random_like
    monkeypatch.setattr(sharpness, "_random_like", lambda params, gen, kind: original(params, gen, "gaussian"))
    assert main(["selfcheck", "--protocol", "smoke-digits"]) == 1
    out = capsys.readouterr().out
    assert "weight_sharpness.trace" in out and "selfcheck FAILED" in out


def test_selfcheck_skips_a_protocol_whose_optional_library_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.attacks import external
    from bench.cli import main

    def absent() -> None:
        raise external.OptionalDependencyError("the autoattack cells need torchattacks")

    monkeypatch.setattr(external, "_torchattacks", absent)
    assert main(["selfcheck", "--protocol", "cifar10-autoattack", "smoke-digits"]) == 0
    out = capsys.readouterr().out
    assert "skipped: the autoattack cells need torchattacks" in out and "of 1 protocol(s)" in out
    assert main(["selfcheck", "--protocol", "cifar10-autoattack"]) == 1  # nothing checked is no pass
    assert "selfcheck checked nothing" in capsys.readouterr().out

    def broken() -> None:
        raise ImportError("torchattacks is installed but broken")  # not a missing optional library: an error

    monkeypatch.setattr(external, "_torchattacks", broken)
    with pytest.raises(ImportError, match="installed but broken"):
        main(["selfcheck", "--protocol", "cifar10-autoattack"])


def test_an_evaluation_stamps_the_digest_only_where_this_install_reproduces_the_pins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dataclasses

    monkeypatch.setattr(numerics, "_VERIFIED", {})
    assert numerics.verified_digest(SMOKE) == (numerics.numerics_digest(SMOKE), "reproduced")
    assert numerics.verified_digest(dataclasses.replace(SMOKE, smoothness_iters=21)) == (
        None, "no pins for this protocol hash"
    )  # fmt: skip
    monkeypatch.setattr(numerics, "_VERIFIED", {})
    original = sharpness._random_like
    monkeypatch.setattr(sharpness, "_random_like", lambda params, gen, kind: original(params, gen, "gaussian"))
    digest, how = numerics.verified_digest(SMOKE)
    assert digest is None and how.endswith("values moved")


def test_the_metrics_run_in_float64_only_for_an_all_float64_model() -> None:
    from torch import nn

    from bench.metrics.similarity import metric_dtype

    assert metric_dtype(nn.Linear(2, 2)) == torch.float32
    assert metric_dtype(nn.Linear(2, 2).double()) == torch.float64
    assert metric_dtype(nn.Sequential(nn.Linear(2, 2).double(), nn.Linear(2, 2))) == torch.float32  # mixed
    assert metric_dtype(nn.Linear(2, 2).bfloat16()) == torch.float32
    assert metric_dtype(nn.Flatten()) == torch.float32  # no parameters
