"""Out-of-memory back-off and batch sizing from free memory, with OOM injected on a CPU."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from conftest import tiny_cifar_model, trained_digits_model

from bench import batching
from bench.attacks import run_attack
from bench.batching import AdaptiveBatch, OutOfMemory, batch_size_for, fit_batch_size, is_out_of_memory
from bench.data import load_digits_smoke
from bench.protocol import WeightSharpnessSpec, get_protocol
from bench.runner import evaluate
from surrogates.submission import load_surrogate, save_surrogate
from targets.zoo import LoadedTarget


def _oom(n: int, k: int) -> None:
    if n > k:
        raise torch.OutOfMemoryError(f"CUDA out of memory (injected): batch of {n} > {k}")


class OomAbove(torch.nn.Module):
    """``model``, except that a batch of more than ``k`` images runs out of memory (as a GPU would)."""

    def __init__(self, model: torch.nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k
        self.num_classes = getattr(model, "num_classes", None)
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _oom(len(x), self.k)
        return self.model(x)


def test_map_covers_the_range_in_order_without_errors() -> None:
    ab = AdaptiveBatch(4)
    assert ab.map(lambda s: (s.start, s.stop), 3, 13) == [(3, 7), (7, 11), (11, 13)]
    assert ab.events == [] and ab.batch_size == 4


def test_oom_halves_retries_the_same_images_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    data = torch.arange(100)

    def double(s: slice) -> torch.Tensor:
        _oom(s.stop - s.start, 20)
        return data[s] * 2

    ab = AdaptiveBatch(64, label="attack batches")
    with caplog.at_level(logging.WARNING, logger="bench.batching"):
        out = torch.cat(ab.map(double, 0, 100))
    assert torch.equal(out, data * 2)  # every image exactly once, in order
    assert ab.batch_size == 16 and ab.initial == 64  # 64 -> 32 -> 16, and it stays there
    assert [(e.start, e.failed, e.retry) for e in ab.events] == [(0, 64, 32), (0, 32, 16)]
    assert "attack batches: out of memory on cpu at batch size 64 (images 0-63)" in caplog.text
    assert "retrying the same images at batch size 32" in caplog.text


def test_backed_off_attack_equals_a_run_without_back_off() -> None:
    """Randomness keyed by image id: PGD with random start after back-off = the same PGD at the final size."""
    model = tiny_cifar_model(0)
    x = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 10, (24,), generator=torch.Generator().manual_seed(4))
    ids = torch.arange(100, 124)

    def attack(m: torch.nn.Module, s: slice) -> torch.Tensor:
        return run_attack("pgd", m, x[s], y[s], 8 / 255, steps=3, targeted=False, ids=ids[s], seed=0)

    ab = AdaptiveBatch(24)
    backed_off = torch.cat(ab.map(lambda s: attack(OomAbove(model, 7), s), 0, 24))
    assert ab.batch_size == 6 and len(ab.events) == 2  # 24 -> 12 -> 6
    plain = torch.cat([attack(model, slice(s, s + 6)) for s in range(0, 24, 6)])
    assert torch.equal(backed_off, plain)
    whole = attack(model, slice(0, 24))  # other batch shapes: float rounding of batched convolutions only
    assert (backed_off - whole).abs().max() <= 1e-6 or (backed_off == whole).float().mean() > 0.99


def test_without_back_off_an_out_of_memory_error_is_final_and_names_the_fix() -> None:
    ab = AdaptiveBatch(8, label="attack batches", backoff=False)
    with pytest.raises(OutOfMemory, match=r"batch size 8 \(images 0-7\) in deterministic mode.*smaller --batch-size"):
        ab.map(lambda s: _oom(s.stop - s.start, 4), 0, 16)
    assert ab.batch_size == 8 and ab.events == []


def test_batch_size_one_fails_with_a_message_that_names_the_size_and_the_fix() -> None:
    ab = AdaptiveBatch(8, label="metric batches")
    with pytest.raises(OutOfMemory, match=r"metric batches: out of memory on cpu with batch size 1 \(image 5\)") as e:
        ab.map(lambda s: _oom(s.stop - s.start + 10, 0), 5, 9)
    assert "Free memory on the device" in str(e.value) and "--device cpu" in str(e.value)
    assert isinstance(e.value.__cause__, torch.OutOfMemoryError)
    assert not isinstance(e.value, torch.OutOfMemoryError)  # an outer back-off must not catch it again
    assert [ev.failed for ev in ab.events] == [4, 2]  # the slice of 4 images was halved, not the size of 8


def test_other_errors_pass_through_untouched() -> None:
    ab = AdaptiveBatch(8)

    def broken(_: slice) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        ab.map(broken, 0, 16)
    assert ab.events == [] and ab.batch_size == 8


def test_call_reruns_work_that_batches_itself_and_respects_its_size() -> None:
    sizes: list[int] = []

    def metric(bs: int) -> int:
        sizes.append(bs)
        _oom(bs, 5)
        return bs

    ab = AdaptiveBatch(64)
    assert ab.call(metric, n=12) == 3
    assert sizes == [12, 6, 3]  # never 64 or 32: the work has only 12 images
    assert ab.call(metric, n=12) == 3 and sizes[-1] == 3  # the smaller size is kept for later work


def test_what_counts_as_out_of_memory() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    accelerator_error = getattr(torch, "AcceleratorError", RuntimeError)  # a direct cudaMalloc failure
    assert is_out_of_memory(accelerator_error("CUDA error: out of memory\nCUDA kernel errors might be reported ..."))
    assert not is_out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_batch_size_for_free_memory() -> None:
    mib = 2**20
    assert batch_size_for(1000 * mib, mib, cap=4096) == 800  # 80% of free memory
    assert batch_size_for(1005 * mib, mib, cap=4096) == 800  # rounded down to a multiple of 8
    assert batch_size_for(1000 * mib, mib, cap=256) == 256
    assert batch_size_for(5 * mib, mib, cap=256) == 4  # below 8: not rounded
    assert batch_size_for(0, mib, cap=256) == 1
    with pytest.raises(ValueError, match="headroom"):
        batch_size_for(1, 1, cap=1, headroom=1.5)


def test_off_cuda_the_requested_size_is_used_without_probing() -> None:
    def probe(_: int) -> None:
        raise AssertionError("no probe off CUDA")

    assert fit_batch_size(probe, "cpu", requested=256) == 256
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        fit_batch_size(probe, "cpu", requested=0)


def test_cuda_sizing_measures_the_probes_peak_and_the_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path with the torch.cuda memory functions replaced by a fake allocator."""
    mem = {"allocated": 100.0, "peak": 100.0}
    per_image, free = 3 * 2**20, 4 * 2**30

    def probe(n: int) -> None:
        _oom(n, 40)  # the probe itself backs off: 64 -> 32
        mem["peak"] = mem["allocated"] + n * per_image

    fake = {
        "synchronize": lambda device=None: None,
        "empty_cache": lambda: None,
        "is_available": lambda: True,
        "reset_peak_memory_stats": lambda device=None: mem.update(peak=mem["allocated"]),
        "memory_allocated": lambda device=None: mem["allocated"],
        "max_memory_allocated": lambda device=None: mem["peak"],
        "mem_get_info": lambda device=None: (free, 80 * 2**30),
    }
    for name, fn in fake.items():
        monkeypatch.setattr(batching.torch.cuda, name, fn)
    got = fit_batch_size(probe, "cuda", requested=4096, probe_size=64)
    assert got == batch_size_for(free, per_image, cap=4096) == 1088  # 0.8 * 4 GiB / 3 MiB = 1092 -> 1088
    assert fit_batch_size(probe, "cuda", requested=512) == 512  # capped at the requested size


# --- the runner ------------------------------------------------------------------------------------------------


def _mlp(seed: int, hidden: int) -> torch.nn.Module:
    return trained_digits_model(seed, "mlp", epochs=8, hidden=hidden)


def test_an_evaluation_that_runs_out_of_memory_backs_off_and_gives_the_same_record(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    base = get_protocol("smoke-digits")
    proto = dataclasses.replace(
        base, attacks=base.attacks[:1], eps_255=(32,), smoothness_images=16, similarity_images=16,
        weight_sharpness=WeightSharpnessSpec(images=16, max_iters=3, tol=1e-3, probes=2),
    )  # fmt: skip
    folder = save_surrogate(_mlp(1, 32), tmp_path / "sur", architecture="mlp", num_classes=10, mean=(0.5,),
                            std=(0.5,), input_size=(1, 8, 8), arch_kwargs={"hidden": 32})  # fmt: skip
    targets = {n: LoadedTarget(n, _mlp(10 + i, 48), f"{i:064x}", "test", "smoke") for i, n in enumerate(base.targets)}
    data = load_digits_smoke()

    reference = evaluate(load_surrogate(folder), proto, data, targets, limit=32, batch_size=8, progress=False)
    flaky = load_surrogate(folder)
    flaky.runs[0] = OomAbove(flaky.runs[0], 8)  # every pass over more than 8 images runs out of memory
    with caplog.at_level(logging.WARNING, logger="bench.batching"):
        rec = evaluate(flaky, proto, data, targets, limit=32, batch_size=32, progress=False)

    events = rec.provenance["oom_backoffs"]
    assert [(e["label"], e["failed"], e["retry"]) for e in events] == [
        ("attack batches", 32, 16), ("attack batches", 16, 8), ("metric batches", 16, 8),
    ]  # fmt: skip
    assert rec.provenance["batch_size"] == 32 and reference.provenance["oom_backoffs"] == []
    assert "out of memory" in caplog.text
    ref_run, run = reference.runs[0], rec.runs[0]
    assert run["outcomes"] == ref_run["outcomes"]  # the same images in the same batches of 8: identical
    for key in ("cells", "smoothness", "similarity", "weight_sharpness", "clean_accuracy"):
        assert run[key] == ref_run[key], key
    assert np.isclose(rec.score["mean"], reference.score["mean"])
