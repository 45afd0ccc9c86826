"""The submission folder, which is also a valid Hugging Face Hub model repository:

    config.json         architecture, num_classes, input size, mean/std, free metadata (recipe, paper, ...)
    model.safetensors   the bare network's state dict (the architecture's own parameter names)
    README.md           model card

``kind`` is ``single`` (the files above), ``ensemble`` (``members`` are sub-folders, each a single
submission; logits are averaged into one surrogate) or ``seed-group`` (``members`` are independent
runs of one recipe, evaluated one by one and reported as mean and std). Loading reads JSON and
safetensors only: nothing in a submission is ever executed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

from bench.hashing import sha256_file, sha256_text
from bench.hubclient import snapshot_commit
from bench.jsonvalues import is_finite_number, is_positive_int
from bench.models import NormalizedModel, build_model, known_architecture

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HUB_PREFIX = "hf://"
Kind = Literal["single", "ensemble", "seed-group"]


class SubmissionError(ValueError):
    """The submission folder is not valid; the message names the file and the fix."""


@dataclass(frozen=True)
class SurrogateConfig:
    kind: Kind
    architecture: str = ""
    num_classes: int = 0
    input_size: tuple[int, int, int] = (3, 32, 32)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    members: tuple[str, ...] = ()
    transferbench_format: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if self.kind != "single":
            for k in ("architecture", "num_classes", "input_size", "mean", "std", "arch_kwargs"):
                d.pop(k)
        else:
            d.pop("members")
        return d


def read_config(folder: Path) -> SurrogateConfig:
    """Parse and validate ``config.json``; every problem names the file and what to change."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise SubmissionError(f"{path} not found: a submission folder needs {CONFIG_NAME} and {WEIGHTS_NAME}.")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SubmissionError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(raw, dict):
        raise SubmissionError(f"{path} must hold a JSON object.")
    fmt = raw.get("transferbench_format", FORMAT_VERSION)
    if fmt != FORMAT_VERSION:
        raise SubmissionError(
            f"{path}: transferbench_format {fmt} is not supported (this version reads {FORMAT_VERSION})."
        )
    kind = raw.get("kind", "single")
    if kind not in ("single", "ensemble", "seed-group"):
        raise SubmissionError(f"{path}: kind must be 'single', 'ensemble' or 'seed-group', got {kind!r}.")
    if kind != "single":
        members = raw.get("members")
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise SubmissionError(f"{path}: a {kind} needs 'members', a non-empty list of sub-folder names.")
        for m in members:
            _check_member_name(path, m)
        return SurrogateConfig(kind=kind, members=tuple(members), metadata=_object(path, raw, "metadata"))
    return _single_config(path, raw)


def _single_config(path: Path, raw: dict[str, Any]) -> SurrogateConfig:
    arch = raw.get("architecture")
    if not isinstance(arch, str) or not known_architecture(arch):
        from bench.models import ARCHS

        raise SubmissionError(
            f"{path}: unknown architecture {arch!r}. Use a registered name ({', '.join(ARCHS)}) or 'timm:<model>'."
        )
    n = raw.get("num_classes")
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise SubmissionError(f"{path}: num_classes must be an integer >= 2, got {n!r}.")
    size = raw.get("input_size", [3, 32, 32])
    mean, std = raw.get("mean"), raw.get("std")
    if not (isinstance(size, list) and len(size) == 3 and all(is_positive_int(s) for s in size)):
        raise SubmissionError(
            f"{path}: input_size must be [C, H, W], three positive integers (e.g. [3, 32, 32]), got {size!r}."
        )
    for name, v in (("mean", mean), ("std", std)):
        if not (isinstance(v, list) and all(is_finite_number(s) for s in v) and len(v) == size[0]):
            raise SubmissionError(
                f"{path}: {name} must list {size[0]} finite numbers (one per channel, e.g. 0.5; not NaN, Infinity "
                f"or true/false), got {v!r}."
            )
    if any(s <= 0 for s in std):
        raise SubmissionError(f"{path}: std must be positive, got {std!r}.")
    return SurrogateConfig(
        kind="single",
        architecture=arch,
        num_classes=n,
        input_size=(size[0], size[1], size[2]),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        arch_kwargs=_object(path, raw, "arch_kwargs"),
        metadata=_object(path, raw, "metadata"),
    )


def _object(path: Path, raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise SubmissionError(f"{path}: {key} must be a JSON object, got {value!r}.")
    return dict(value)


def _check_member_name(where: Path, name: str) -> None:
    if not name or name in (".", "..") or any(c in name for c in "/\\") or Path(name).is_absolute():
        raise SubmissionError(
            f"{where}: member name {name!r} must be a sub-folder of the submission, "
            "given by a plain name (no '/', '..')."
        )


class Ensemble(nn.Module):
    """Averages the logits of its members (all take [0, 1] inputs)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


@dataclass
class Surrogate:
    """A loaded submission. ``runs`` holds one model (single, ensemble) or one per seed (seed-group)."""

    name: str
    kind: Kind
    config: SurrogateConfig
    sha256: str
    runs: list[nn.Module]
    run_names: list[str]
    member_sha256: dict[str, str]
    source: str
    # sha256 of the model-defining config (architecture, classes, input size, mean/std, kwargs; members' too),
    # free metadata excluded: ``sha256`` covers the weights only, and the same weights under another mean/std
    # are another model.
    config_sha256: str = ""

    @property
    def num_classes(self) -> int:
        return self.runs[0].num_classes  # type: ignore[return-value]


def _load_single(folder: Path, cfg: SurrogateConfig) -> tuple[NormalizedModel, str]:
    """Build the model and load its weights; returns it with the sha256 of exactly the bytes that were loaded."""
    wpath = folder / WEIGHTS_NAME
    if not wpath.is_file():
        raise SubmissionError(f"{wpath} not found: save the network's state dict with safetensors as {WEIGHTS_NAME}.")
    data = wpath.read_bytes()  # read once: the hash in the record is the hash of the weights in the model
    sha = hashlib.sha256(data).hexdigest()
    try:
        state = load_safetensors(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise SubmissionError(f"{wpath} is not a readable safetensors file ({e}); re-export the checkpoint.") from None
    try:
        model = build_model(cfg.architecture, cfg.num_classes, cfg.mean, cfg.std, **cfg.arch_kwargs)
    except (TypeError, ValueError) as e:
        raise SubmissionError(
            f"{folder / CONFIG_NAME}: arch_kwargs {cfg.arch_kwargs} do not fit {cfg.architecture!r} ({e})."
        ) from None
    load_state_strict(model.net, state, where=str(wpath), cfg=cfg)
    model.eval()
    model.num_classes = cfg.num_classes  # type: ignore[assignment]
    model.input_size = cfg.input_size  # type: ignore[assignment]  # checked against the protocol by the runner
    return model, sha


def load_state_strict(net: nn.Module, state: Mapping[str, torch.Tensor], *, where: str, cfg: SurrogateConfig) -> None:
    """Load every tensor, or explain which names and shapes disagree with the architecture."""
    expected = net.state_dict()
    # BatchNorm's step counter does not affect inference; checkpoints from before torch 0.4.1 lack it.
    state = {**{k: v for k, v in expected.items() if k.endswith("num_batches_tracked")}, **state}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]  # fmt: skip
    if missing or unexpected or wrong:
        details = "; ".join(
            part
            for part in (
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {unexpected[:5]}" if unexpected else "",
                f"shape mismatch {wrong[:3]}" if wrong else "",
            )
            if part
        )
        raise SubmissionError(
            f"{where} does not match architecture {cfg.architecture!r} with num_classes={cfg.num_classes} "
            f"and arch_kwargs={cfg.arch_kwargs}: {details}. Check config.json against the checkpoint."
        )
    net.load_state_dict(state, strict=True)


def resolve(location: str | os.PathLike) -> tuple[Path, str, str]:
    """(local folder, source description, default display name) of a folder or ``hf://owner/repo[@revision]``.

    Hub repos are downloaded with huggingface_hub, safe files only (JSON, safetensors, Markdown). The source of a
    Hub repo names the commit that was read (``hf://owner/repo@<commit>``), also when the location gave a branch,
    a tag or no revision, so that a record says exactly which files it measured.
    """
    loc = str(location)
    if not loc.startswith(HUB_PREFIX):
        path = Path(loc).expanduser()
        if not path.is_dir():
            raise SubmissionError(f"surrogate folder {path} does not exist (or use hf://owner/repo@revision).")
        return path, str(path.resolve()), path.resolve().name
    repo, _, revision = loc[len(HUB_PREFIX) :].partition("@")
    local = _hub_snapshot(loc, repo, revision or None)
    commit = snapshot_commit(local)
    if commit is None:
        log.warning("%s: could not tell the commit of %s; recording the revision as given", loc, local)
    elif revision and revision != commit:
        log.info("%s resolved to commit %s", loc, commit)
    return local, f"{HUB_PREFIX}{repo}@{commit or revision or 'main'}", repo.rsplit("/", 1)[-1]


def _hub_snapshot(loc: str, repo: str, revision: str | None) -> Path:
    """``snapshot_download`` of the safe files; offline (TRANSFERBENCH_OFFLINE / HF_HUB_OFFLINE) only the cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    from bench.hubclient import hub_endpoint, network_errors, offline_var

    var = offline_var()
    endpoint = hub_endpoint()
    try:
        local = snapshot_download(
            repo_id=repo,
            revision=revision,
            allow_patterns=["*.json", "*.safetensors", "*.md"],  # never pickles or code
            local_files_only=var is not None,
            endpoint=endpoint,
        )
    except LocalEntryNotFoundError as e:
        if var is not None:
            raise SubmissionError(
                f"{loc} is not in the Hugging Face cache and downloads are disabled ({var} is set). Copy the "
                f"submission folder to this machine and pass its path, or unset {var} to download it."
            ) from None
        raise SubmissionError(
            f"{loc} could not be downloaded from {endpoint or 'the Hub'} and is not cached ({e.__cause__ or e}). "
            "Check the connection, HF_ENDPOINT and HF_TOKEN, or copy the submission folder here and pass its path."
        ) from None
    except HFValidationError as e:
        raise SubmissionError(f"{loc} is not a valid Hub location ({e}); write hf://owner/repo[@revision].") from None
    except (OSError, *network_errors()) as e:  # missing repo or revision, auth, server errors (HfHubHTTPError)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SubmissionError(
            f"{loc} could not be downloaded ({type(e).__name__}: {first}). Check owner/repo@revision and HF_TOKEN, "
            "or copy the submission folder here and pass its path."
        ) from None
    return Path(local)


def model_config_sha256(cfg: SurrogateConfig, members: Mapping[str, SurrogateConfig] | None = None) -> str:
    """Hash of what defines the model in ``config.json`` (not the free metadata), members included."""

    def defining(c: SurrogateConfig) -> dict[str, Any]:
        d = c.to_json()
        d.pop("metadata")
        return d

    payload = {"config": defining(cfg), "members": {m: defining(c) for m, c in sorted((members or {}).items())}}
    return sha256_text(json.dumps(payload, sort_keys=True, separators=(",", ":")))


def load_surrogate(location: str | os.PathLike, device: str | torch.device = "cpu") -> Surrogate:
    """Load a submission folder (or Hub repo) into eval-mode models on ``device``."""
    folder, source, default_name = resolve(location)
    cfg = read_config(folder)
    name = str(cfg.metadata.get("name") or default_name)
    if cfg.kind == "single":
        model, sha = _load_single(folder, cfg)
        return Surrogate(
            name, "single", cfg, sha, [model.to(device)], [name], {name: sha}, source, model_config_sha256(cfg)
        )
    members: list[nn.Module] = []
    shas: dict[str, str] = {}
    member_cfgs: dict[str, SurrogateConfig] = {}
    for m in cfg.members:
        sub = (folder / m).resolve()
        if folder.resolve() not in sub.parents:
            raise SubmissionError(f"{folder / CONFIG_NAME}: member {m!r} must be a sub-folder of the submission.")
        sub_cfg = member_cfgs[m] = read_config(sub)
        if sub_cfg.kind != "single":
            raise SubmissionError(f"{sub / CONFIG_NAME}: members of a {cfg.kind} must be single checkpoints.")
        model, shas[m] = _load_single(sub, sub_cfg)
        members.append(model.to(device))
    for attr in ("num_classes", "input_size"):
        values = {getattr(mm, attr, None) for mm in members}
        if len(values) != 1:
            raise SubmissionError(f"{folder}: members disagree on {attr} ({sorted(map(str, values))}).")
    same = _same_weights(shas) if cfg.kind == "seed-group" else []
    if same:
        raise SubmissionError(f"{folder}: members {same} of the seed group hold identical weights; a seed group needs "
                              "one independently trained checkpoint per seed.")  # fmt: skip
    sha = sha256_text(json.dumps({"kind": cfg.kind, "members": shas}, sort_keys=True))
    config_sha = model_config_sha256(cfg, member_cfgs)
    if cfg.kind == "ensemble":
        ens = Ensemble(members).eval()
        ens.num_classes = members[0].num_classes  # type: ignore[assignment]
        ens.input_size = members[0].input_size  # type: ignore[assignment]
        return Surrogate(name, "ensemble", cfg, sha, [ens], [name], shas, source, config_sha)
    return Surrogate(name, "seed-group", cfg, sha, members, list(cfg.members), shas, source, config_sha)


def _model_card(cfg: SurrogateConfig, name: str) -> str:
    meta = cfg.metadata
    lines = [
        "---",
        "library_name: transferbench",
        "tags: [transferbench, surrogate, adversarial-transferability]",
        "---",
        f"# {name}",
        "",
        f"TransferBench surrogate submission (format {FORMAT_VERSION}, kind `{cfg.kind}`).",
        "",
    ]
    if cfg.kind == "single":
        lines += [f"- architecture: `{cfg.architecture}` ({cfg.num_classes} classes, input {list(cfg.input_size)})",
                  f"- normalization inside the model: mean {list(cfg.mean)}, std {list(cfg.std)}"]  # fmt: skip
    else:
        lines.append(f"- members: {', '.join(cfg.members)}")
    lines += [f"- {k}: {v}" for k, v in sorted(meta.items())]
    lines += ["", "Evaluate with `transferbench evaluate <this folder> --protocol <name>`.", ""]
    return "\n".join(lines)


def atomic_folder(out: Path, fill: Callable[[Path], None], overwrite: bool) -> Path:
    """Write a folder all at once: ``fill`` writes into a temporary sibling, which then replaces ``out``.

    An existing ``out`` is refused unless ``overwrite``; if ``fill`` fails, ``out`` is left as it was and the
    temporary folder is removed, so a reader never sees a half-written submission. With ``overwrite`` the old
    folder is renamed aside (``.<name>.old-<random>``) before the new one moves in and deleted only after, so an
    interruption leaves the old or the new folder, never neither. The folder gets the usual mode (0777 less the
    umask), like any folder the user creates.
    """
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) or choose another folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(out, "tmp", create=True)
    try:
        fill(tmp)
        aside = _new_sibling(out, "old", create=False) if out.exists() else None
        if aside is not None:
            os.replace(out, aside)
        try:
            os.replace(tmp, out)
        except OSError:
            if aside is not None:
                os.replace(aside, out)  # put the old folder back
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _new_sibling(out: Path, tag: str, *, create: bool) -> Path:
    """A fresh hidden name beside ``out``; created with ``os.mkdir`` (mode 0777 less the umask) when ``create``."""
    for _ in range(100):
        candidate = out.parent / f".{out.name}.{tag}-{secrets.token_hex(4)}"
        if create:
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            return candidate
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"could not find a free temporary name beside {out}; remove stale .{out.name}.* folders.")


def save_surrogate(
    net: nn.Module,
    out: str | os.PathLike,
    *,
    architecture: str,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: tuple[int, int, int] = (3, 32, 32),
    arch_kwargs: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a single-checkpoint submission folder atomically. ``net`` is the bare (un-normalized) network."""
    if isinstance(net, NormalizedModel):
        net = net.net
    cfg = SurrogateConfig(
        kind="single", architecture=architecture, num_classes=num_classes, input_size=tuple(input_size),  # type: ignore[arg-type]
        mean=tuple(mean), std=tuple(std), arch_kwargs=dict(arch_kwargs or {}), metadata=dict(metadata or {}),
    )  # fmt: skip
    name = str(cfg.metadata.get("name") or Path(out).name)

    def fill(tmp: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
        (tmp / "README.md").write_text(_model_card(cfg, name))

    return atomic_folder(Path(out), fill, overwrite)


def _same_weights(shas: Mapping[str, str]) -> list[str]:
    """The members (sorted) whose weights sha256 another member shares."""
    hashes = list(shas.values())
    return sorted(m for m, h in shas.items() if hashes.count(h) > 1)


_SEED_FREE = ("seed", "channels_last")  # hyperparameters seeds of one recipe may differ in (layout: same maths)


def differing_keys(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """The keys (sorted) whose values differ between ``a`` and ``b``, a key missing on one side included."""
    skip = set(ignore)
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))


def check_seed_group(members: Mapping[str, SurrogateConfig], where: Path) -> None:
    """Raise :class:`SubmissionError` unless ``members`` look like seeds of one recipe (see :func:`save_group`)."""
    fields = ("kind", "architecture", "arch_kwargs", "num_classes", "input_size", "mean", "std")
    first_name, first = next(iter(members.items()))
    for name, cfg in members.items():
        for f in fields:
            if getattr(cfg, f) != getattr(first, f):
                raise SubmissionError(
                    f"{where}: seed-group members {first_name!r} and {name!r} differ in {f} ({getattr(first, f)!r} vs "
                    f"{getattr(cfg, f)!r}); a seed group holds trainings of one recipe that differ in the seed only. "
                    "Use kind 'ensemble' to combine different models."
                )
        for key in ("recipe", "hyperparameters"):
            a, b = first.metadata.get(key), cfg.metadata.get(key)
            if a is None or b is None:
                continue  # not recorded (an external checkpoint): nothing to check
            if key == "hyperparameters" and isinstance(a, dict) and isinstance(b, dict):
                differ = differing_keys(a, b, ignore=_SEED_FREE)
                if differ:
                    raise SubmissionError(f"{where}: seed-group members {first_name!r} and {name!r} were trained with "
                                          f"different hyperparameters {differ}; only the seed may differ.")  # fmt: skip
            elif a != b:
                raise SubmissionError(f"{where}: seed-group members {first_name!r} and {name!r} come from different "
                                      f"{key}s ({a!r} vs {b!r}); a seed group holds one recipe.")  # fmt: skip


def save_group(
    members: Mapping[str, str | os.PathLike],
    out: str | os.PathLike,
    *,
    kind: Literal["ensemble", "seed-group"],
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Assemble single submissions (name -> folder) into an ensemble or seed-group folder (copies them).

    A seed group is several trainings of one recipe that differ in the seed only, so its members must share the
    model definition (architecture, its arguments, classes, input size, normalization) and, where their metadata
    records them, the recipe and every hyperparameter but ``seed`` and the layout switch ``channels_last`` (see
    :func:`check_seed_group`); no two may hold the same weights.
    """
    if not members:
        raise SubmissionError(f"{out}: a {kind} needs at least one member.")
    for member in members:
        _check_member_name(Path(out), member)
    configs = {m: read_config(Path(src)) for m, src in members.items()}
    if kind == "seed-group":
        check_seed_group(configs, Path(out))
        same = _same_weights({m: sha256_file(Path(src) / WEIGHTS_NAME) for m, src in members.items()})
        if same:
            raise SubmissionError(f"{out}: members {same} hold identical weights; a seed group needs one "
                                  "independently trained checkpoint per seed.")  # fmt: skip
    cfg = SurrogateConfig(kind=kind, members=tuple(members), metadata=dict(metadata or {}))
    name = str(cfg.metadata.get("name") or Path(out).name)

    def fill(tmp: Path) -> None:
        for member, src in members.items():
            if configs[member].kind != "single":
                raise SubmissionError(f"{src}: only single checkpoints can be members of a {kind}.")
            shutil.copytree(src, tmp / member)
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
        (tmp / "README.md").write_text(_model_card(cfg, name))

    return atomic_folder(Path(out), fill, overwrite)
