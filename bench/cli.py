"""``transferbench``: a thin command line over the library (it parses, calls, prints)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.determinism import deterministic_algorithms, reserve_cublas_workspace
from bench.protocol import PROTOCOLS, get_protocol
from targets.zoo import ACCURACY_TOLERANCE as TARGET_TOLERANCE


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def cmd_protocols(args: argparse.Namespace) -> int:
    if args.show:
        print(json.dumps(get_protocol(args.show).to_json(), indent=1))
        return 0
    print(f"{'protocol':<16}{'version':>8}  {'kind':<10}{'status':<12}{'images':>7}{'cells':>6}  sha256")
    for name, p in PROTOCOLS.items():
        print(
            f"{name:<16}{p.version:>8}  {p.kind:<10}{p.status:<12}{len(p.image_ids):>7}{len(p.cells()):>6}  {p.sha256}"
        )
    return 0


def cmd_selfcheck(args: argparse.Namespace) -> int:
    from bench import numerics
    from bench.attacks.external import OptionalDependencyError

    names = args.protocol or list(PROTOCOLS)
    protocols = [get_protocol(n) for n in names]
    pins = numerics.load_pins()
    print(f"{'protocol':<24}{'values':>7}  result")
    drifts, checked = [], 0
    for p in protocols:
        n_values = len(numerics.pinned_entry(p, pins)["values"])
        try:
            moved = numerics.check([p], pins)
        except OptionalDependencyError as e:  # AutoAttack's torchattacks is not installed
            print(f"{p.id:<24}{n_values:>7}  skipped: {e}", flush=True)
            continue
        drifts, checked = drifts + moved, checked + 1
        print(f"{p.id:<24}{n_values:>7}  {'ok' if not moved else f'{len(moved)} moved'}", flush=True)
    where = f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    if drifts:
        print(numerics.drift_report(drifts))
        print(f"selfcheck FAILED ({where})")
        return 1
    if not checked:
        print(f"selfcheck checked nothing: every protocol asked for was skipped ({where})")
        return 1
    print(f"selfcheck passed: this install reproduces the reference numerics of {checked} protocol(s) ({where})")
    return 0


def _target_names(args: argparse.Namespace) -> list[str]:
    from targets import TARGETS

    if getattr(args, "names", None):
        return list(args.names)
    if getattr(args, "protocol", None):
        return list(get_protocol(args.protocol).targets)
    return list(TARGETS)


def cmd_targets_list(args: argparse.Namespace) -> int:
    from targets import TARGETS, describe_source

    print(f"{'target':<30}{'family':<23}{'architecture':<40}{'pinned':<8}{'license':<16}source")
    for name in _target_names(args):
        spec = TARGETS.get(name)
        pinned = "yes" if spec.pinned else "no"
        print(f"{name:<30}{spec.family:<23}{spec.architecture:<40}{pinned:<8}{spec.license or '-':<16}"
              f"{describe_source(spec)}")  # fmt: skip
    return 0


def cmd_targets_fetch(args: argparse.Namespace) -> int:
    from targets import TARGETS
    from targets.zoo import resolve_weights

    for name in _target_names(args):
        path, sha = resolve_weights(TARGETS.get(name), args.weights_dir)
        print(f"{name:<30}{sha}  {path}")  # the full hash: what a zoo entry pins
    return 0


def cmd_targets_verify(args: argparse.Namespace) -> int:
    """sha256 of every weights file, then clean accuracy on the protocol's full image list vs the pinned value."""
    from bench.runner import adapt_to_protocol, load_protocol_data, predictions, select_images
    from targets import TARGETS, load_target

    protocol = get_protocol(args.protocol)
    images = select_images(protocol, load_protocol_data(protocol, args.data_dir), None)
    data_sha = images.content_sha256()
    x, y = images.images(), images.labels
    print(f"{protocol.id}: {len(images)} images, data sha256 {data_sha[:16]} ({images.source})")
    failed = 0
    for name in args.names or protocol.targets:
        device = _device(args.device)
        target = load_target(name, weights_dir=args.weights_dir, device=device, input_size=protocol.input_size)
        model = adapt_to_protocol(name, target.model, TARGETS.get(name).num_classes, protocol)
        preds = predictions(name, model, x, torch.device(device), protocol.num_classes, 500)
        acc = float((preds == y).float().mean())
        expected = dict(TARGETS.get(name).expected_accuracy).get(data_sha)
        ok = expected is None or abs(acc - expected) <= TARGET_TOLERANCE
        failed += not ok
        status = "no pinned accuracy for this data" if expected is None else ("ok" if ok else "MISMATCH")
        pinned = "" if expected is None else f" (pinned {100 * expected:.2f}%)"
        print(f"{name:<22}sha256 ok {target.sha256[:12]}  accuracy {100 * acc:.2f}%{pinned}  {status}")
    return 1 if failed else 0


def cmd_targets_train(args: argparse.Namespace) -> int:
    """Train one of the project's CIFAR-10 zoo targets with its frozen, seeded recipe."""
    from bench.data import load_cifar10
    from surrogates.recipes import parse_overrides
    from targets.train import train_target

    with deterministic_algorithms(args.deterministic):
        out = train_target(
            args.name,
            load_cifar10("train", args.data_dir),
            args.out,
            device=_device(args.device),
            overrides=parse_overrides(args.params),
            test_data=load_cifar10("test", args.data_dir),
            overwrite=args.overwrite,
        )
    print(f"target written to {out}; next: `transferbench targets publish {out}` (gives the commit), then "
          f"`transferbench targets pins {out} --revision COMMIT`")  # fmt: skip
    return 0


def cmd_targets_pins(args: argparse.Namespace) -> int:
    """sha256 and accuracy of a trained target on the protocol's full image list, as a line for the zoo file."""
    from bench.runner import load_protocol_data, select_images
    from targets.train import target_pins

    protocol = get_protocol(args.protocol)
    images = select_images(protocol, load_protocol_data(protocol, args.data_dir), None)
    pins = target_pins(args.folder, images, revision=args.revision, device=_device(args.device))
    print(pins.as_code())
    return 0


def cmd_targets_publish(args: argparse.Namespace) -> int:
    from targets.publish import publish_target

    sha = publish_target(args.folder, args.repo, endpoint=args.endpoint, revision_message=args.message,
                         overwrite=args.overwrite, allow_overrides=args.allow_overrides)  # fmt: skip
    print(f"published {args.folder} to {args.repo} at commit {sha}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    record, path = _evaluate_and_store(args)
    print(f"score {100 * record.score['mean']:.2f} ({record.protocol['ranking_cell']}, mean ASR over targets); "
          f"record: {path}")  # fmt: skip
    return 0


def _evaluate_and_store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from bench.runner import evaluate, load_protocol_data
    from leaderboard.store import LocalStore
    from surrogates import load_surrogate
    from targets import load_targets

    protocol = get_protocol(args.protocol)
    device = _device(args.device)
    names = args.targets or list(protocol.targets)
    unknown = [n for n in names if n not in protocol.targets]
    if unknown:
        raise ValueError(f"{unknown} are not targets of {protocol.id} ({', '.join(protocol.targets)})")
    surrogate = load_surrogate(args.path, device=device)
    subset = protocol if not args.targets else _with_targets(protocol, names)
    store = LocalStore(args.out)
    _refuse_a_duplicate(store, subset, surrogate, args)  # before hours of evaluation, not after them
    data = load_protocol_data(protocol, args.data_dir)
    tg = load_targets(names, weights_dir=args.weights_dir, device=device, input_size=protocol.input_size)
    record = evaluate(surrogate, subset, data, tg, device=device, batch_size=args.batch_size, limit=args.limit,
                      progress=not args.quiet, precision=args.precision, channels_last=args.channels_last,
                      deterministic=args.deterministic)  # fmt: skip
    return record, store.add(record, overwrite=args.overwrite)


def _refuse_a_duplicate(store, protocol, surrogate, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    """StoreError now if the store already holds this run's record (same file name) and --overwrite is not given."""
    from bench.runner import partial_images
    from leaderboard.record import record_file_stem

    partial = partial_images(protocol, args.limit)
    precision = args.precision if args.precision not in (None, protocol.precision) else None
    stem = record_file_stem(surrogate.name, surrogate.sha256, partial_images=partial, other_precision=precision)
    proto = {"name": protocol.name, "version": protocol.version, "sha256": protocol.sha256}
    store.check_free(proto, stem, surrogate.sha256, overwrite=args.overwrite)


def cmd_submit(args: argparse.Namespace) -> int:
    """Validate, evaluate, store, and publish to the Hub leaderboard when one is configured."""
    from leaderboard.hub import publish

    if args.limit or args.targets:
        raise ValueError("a submission runs the whole protocol: drop --limit/--targets (use `evaluate` to try them)")
    pinned = get_protocol(args.protocol).precision
    if args.precision not in (None, pinned):
        raise ValueError(f"a submission runs at the protocol's precision ({pinned}): drop --precision {args.precision} "
                         "(use `evaluate` to try another)")  # fmt: skip
    record, path = _evaluate_and_store(args)
    print(f"record: {path} (score {100 * record.score['mean']:.2f})")
    cfg = _hub_config(args)
    if cfg is None:
        print("no Hub leaderboard configured (TRANSFERBENCH_HUB_REPO / --repo): the record stays local")
        return 0
    print(f"published: {cfg.url}/commit/{publish(record, cfg)}")
    return 0


def _hub_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from leaderboard.hub import HubConfig

    env = HubConfig.from_env()
    repo = args.repo or (env.repo_id if env else None)
    if not repo:
        return None
    endpoint = args.endpoint or (env.endpoint if env else None)
    return HubConfig(repo, revision=args.revision, endpoint=endpoint)


def cmd_publish(args: argparse.Namespace) -> int:
    from leaderboard.hub import AlreadyPublishedError, PublishError, publish, require_config
    from leaderboard.store import LocalStore

    cfg = require_config(_hub_config(args))
    if args.all == bool(args.records):
        raise ValueError("give record files or --all (not both)")
    store = LocalStore(args.dir)
    records = list(store.records(args.protocol)) if args.all else [store.read(Path(p)) for p in args.records]
    failed = 0
    for rec in records:
        try:
            if args.all and rec.deviations:  # the store keeps --limit and other-precision runs; the Hub does not
                print(f"skipped {rec.file_stem} ({'; '.join(rec.deviations)})")
                continue
            print(f"published {rec.file_stem}: {cfg.url}/commit/{publish(rec, cfg, overwrite=args.overwrite)}")
        except AlreadyPublishedError:
            print(f"skipped {rec.file_stem} (already published)")
        except PublishError as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
    return 1 if failed else 0


def cmd_pull(args: argparse.Namespace) -> int:
    from leaderboard.hub import pull, require_config
    from leaderboard.store import LocalStore

    report = pull(require_config(_hub_config(args)), LocalStore(args.dir))
    print(report.summary())
    return 0 if report.ok else 1


def cmd_compare(args: argparse.Namespace) -> int:
    """Exit 0: no significant regression of B against A; 1: regression; 2: not comparable."""
    from leaderboard.compare import EXIT_NOT_COMPARABLE, gate
    from leaderboard.record import RecordError
    from leaderboard.store import LocalStore

    try:
        a, b = LocalStore.read(_one_record(Path(args.a))), LocalStore.read(_one_record(Path(args.b)))
    except (RecordError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NOT_COMPARABLE
    cells = [a.protocol["ranking_cell"]] if args.ranking_cell_only else None
    code, text = gate(a, b, alpha=args.alpha, min_effect=args.min_effect, asr=args.asr, cells=cells,
                      all_cells=args.all_cells, allow_precision_mismatch=args.allow_precision_mismatch,
                      level=args.level)  # fmt: skip
    print(text, file=sys.stderr if code == EXIT_NOT_COMPARABLE else sys.stdout)
    return code


def _one_record(path: Path) -> Path:
    """``path``, or for a folder (an ``evaluate --out`` leaderboard) the one record it holds."""
    if not path.is_dir():
        return path
    found = sorted(path.glob("*/*.json"))
    if len(found) != 1:
        raise ValueError(f"{path} is a folder holding {len(found)} records (<protocol>/<name>.json); name one record "
                         "file, or give a folder that holds exactly one")  # fmt: skip
    return found[0]


def cmd_plots(args: argparse.Namespace) -> int:
    from leaderboard.plots import analysis_table, write_plots
    from leaderboard.store import LocalStore

    records = list(LocalStore(args.dir).records(args.protocol))
    for p in write_plots(records, args.out, fmt=args.format):
        print(p)
    print(analysis_table(records).to_string(index=False))
    return 0


def cmd_cite(args: argparse.Namespace) -> int:
    from leaderboard.cite import cite_text
    from leaderboard.store import LocalStore

    print(cite_text(LocalStore.read(Path(p)) for p in args.records), end="")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from surrogates.recipes import RECIPES

    if args.show:
        print(json.dumps(asdict(RECIPES.get(args.show).config), indent=1, default=str))
        return 0
    for name, recipe in RECIPES.items():
        print(f"{name:<16}{recipe.paper:<48}{recipe.summary}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from bench.data import load_cifar10, load_digits_smoke
    from surrogates.recipes import check_seed_request, parse_overrides, train_recipe, train_seeds

    seeds, overrides = None, parse_overrides(args.params)
    if args.seeds is not None:  # checked before any data is loaded (a download, for the Hub data set)
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seeds {args.seeds!r}: give integers separated by commas, e.g. --seeds 0,1,2") from None
        check_seed_request(args.recipe, seeds, args.out, overrides, args.overwrite)
    if args.data == "cifar10":
        data = load_cifar10("train", args.data_dir)
    else:  # digits outside the smoke protocol's held-out list
        data = load_digits_smoke()
        held_out = set(get_protocol("smoke-digits").image_ids)
        data = data.subset(torch.tensor([i for i, k in enumerate(data.ids.tolist()) if k not in held_out]))
    options = {"arch": args.arch, "arch_kwargs": json.loads(args.arch_kwargs), "out_dir": args.out,
               "overrides": overrides, "device": _device(args.device),
               "overwrite": args.overwrite}  # fmt: skip
    with deterministic_algorithms(args.deterministic):
        if seeds is None:
            print(f"submission written to {train_recipe(args.recipe, data, **options)}")
            return 0
        out = train_seeds(args.recipe, data, seeds, **options)
    print(f"seed group of {len(seeds)} trainings written to {out} (members beside it: {out.name}-s<seed>)")
    return 0


def cmd_group(args: argparse.Namespace) -> int:
    """Assemble trained single submissions into a seed group (one recipe, several seeds) or an ensemble."""
    from surrogates.submission import read_config, save_group

    folders = [Path(m) for m in args.members]
    names = [f.resolve().name for f in folders]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"member folders {repeated} share a name; members are named after their folders, so "
                         "rename or copy one of them")  # fmt: skip
    recipes = {read_config(f).metadata.get("recipe") for f in folders}
    metadata = {"name": args.name or Path(args.out).name}
    if len(recipes) == 1 and None not in recipes:
        metadata["recipe"] = recipes.pop()
    out = save_group(dict(zip(names, folders, strict=True)), args.out, kind=args.kind, metadata=metadata,
                     overwrite=args.overwrite)  # fmt: skip
    print(f"{args.kind} of {len(folders)} members written to {out}")
    return 0


def _with_targets(protocol, names):  # type: ignore[no-untyped-def]
    """A target subset changes the protocol, hence its hash: such records never rank beside full ones."""
    from dataclasses import replace

    return replace(protocol, targets=tuple(names))


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from leaderboard.store import LocalStore, atomic_write_text
    from leaderboard.table import format_table, ranked_table

    records = list(LocalStore(args.dir).records(args.protocol))
    fmt = "csv" if args.csv else args.format
    if fmt == "text":
        text = format_table(ranked_table(records)) + "\n"
    elif fmt == "html":
        from leaderboard.page import render_page

        text = render_page(records)
    else:
        from leaderboard.export import render

        text = render(records, fmt, which=args.table)
    if args.out:
        atomic_write_text(Path(args.out), text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from bench.demo import run_demo
    from leaderboard.store import LocalStore
    from leaderboard.table import format_table, ranked_table

    store = LocalStore(args.out)
    records = run_demo(store, progress=not args.quiet)
    print(format_table(ranked_table(records)))
    print(f"\nrecords written to {store.root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transferbench", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("protocols", help="list protocols with version and hash")
    s.add_argument("--show", metavar="NAME", help="print one protocol in full (JSON)")
    s.set_defaults(func=cmd_protocols)

    s = sub.add_parser(
        "selfcheck",
        help="recompute every protocol's reference numerics on this install (CPU, about 30 s); exit 1 if any moved",
    )
    s.add_argument("--protocol", nargs="+", help="only these protocols (default: all)")
    s.set_defaults(func=cmd_selfcheck)

    s = sub.add_parser("targets", help="list, fetch, verify, train, pin and publish zoo targets")
    tsub = s.add_subparsers(dest="targets_command", required=True)
    t = tsub.add_parser("list", help="zoo entries (all, or one protocol's)")
    t.add_argument("--protocol", help="only this protocol's targets")
    t.set_defaults(func=cmd_targets_list)
    t = tsub.add_parser("fetch", help="download (or find in the mirror) and sha256-check weights")
    t.add_argument("names", nargs="*", help="target names (default: all, or --protocol's)")
    t.add_argument("--protocol", help="fetch this protocol's targets")
    t.add_argument("--weights-dir", help="local mirror of target weights")
    t.set_defaults(func=cmd_targets_fetch)
    t = tsub.add_parser("verify", help="sha256 + clean accuracy on the protocol's images vs the pinned value")
    t.add_argument("names", nargs="*", help="target names (default: the protocol's)")
    t.add_argument("--protocol", default="cifar10")
    t.add_argument("--data-dir", help="local data mirror")
    t.add_argument("--weights-dir", help="local mirror of target weights")
    t.add_argument("--device", default="auto")
    t.set_defaults(func=cmd_targets_verify)
    # No abbreviations where extra --name value pairs are hyperparameters: `--seed 3` must never be read as --seeds.
    t = tsub.add_parser(
        "train", help="train a project zoo target with its seeded recipe (extra --name value overrides)",
        allow_abbrev=False,
    )  # fmt: skip
    t.add_argument("name", help="zoo target name (e.g. tb-resnet50; `transferbench targets list`)")
    t.add_argument("--out", required=True, help="folder to write (weights, config.json, model card)")
    t.add_argument("--data-dir", help="local CIFAR-10 mirror")
    t.add_argument("--device", default="auto")
    t.add_argument("--overwrite", action="store_true")
    _deterministic_option(t)
    t.set_defaults(func=cmd_targets_train)
    t = tsub.add_parser("pins", help="sha256 + accuracy of a trained target, as the line to pin in the zoo")
    t.add_argument("folder", help="folder written by `targets train`")
    t.add_argument("--protocol", default="cifar10", help="the accuracy is pinned on this protocol's full image list")
    t.add_argument("--data-dir", help="local data mirror")
    t.add_argument("--revision", help="Hub commit that holds the published files")
    t.add_argument("--device", default="auto")
    t.set_defaults(func=cmd_targets_pins)
    t = tsub.add_parser("publish", help="upload a trained target to a Hub model repo (token from HF_TOKEN)")
    t.add_argument("folder", help="folder written by `targets train`")
    t.add_argument("--repo", default="transferbench/cifar10-zoo", help="Hub model repo")
    t.add_argument("--endpoint", help="Hub endpoint (default: huggingface.co)")
    t.add_argument("--message", help="commit message")
    t.add_argument("--overwrite", action="store_true", help="replace different files already published")
    t.add_argument("--allow-overrides", action="store_true", help="publish a folder trained with recipe overrides")
    t.set_defaults(func=cmd_targets_publish)

    for command, help_text in (
        ("evaluate", "evaluate a surrogate submission folder (or hf://owner/repo@rev)"),
        ("submit", "validate, evaluate the whole protocol, store, and publish when a Hub leaderboard is configured"),
    ):
        s = sub.add_parser(command, help=help_text)
        _evaluate_options(s)
        s.set_defaults(func=cmd_evaluate if command == "evaluate" else cmd_submit)
        if command == "submit":
            _hub_options(s)

    s = sub.add_parser("publish", help="publish local records to the Hub leaderboard (a dataset repo)")
    s.add_argument("records", nargs="*", help="record JSON files")
    s.add_argument("--all", action="store_true", help="every record in the local store (or of --protocol)")
    s.add_argument("--protocol", help="with --all: only this protocol")
    s.add_argument("--dir", help="leaderboard directory (default: $TRANSFERBENCH_HOME/leaderboard)")
    s.add_argument("--overwrite", action="store_true", help="replace a different record at the same path")
    _hub_options(s)
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("pull", help="download and verify every record of the Hub leaderboard into the local store")
    s.add_argument("--dir", help="leaderboard directory (default: $TRANSFERBENCH_HOME/leaderboard)")
    _hub_options(s)
    s.set_defaults(func=cmd_pull)

    s = sub.add_parser("compare", help="paired per-image comparison of two records; exit 1 on a significant regression")
    s.add_argument("a", help="baseline record (JSON), or a leaderboard folder holding one")
    s.add_argument("b", help="candidate record (JSON), or a leaderboard folder holding one")
    s.add_argument("--alpha", type=float, default=0.05, help="family-wise level after Holm correction")
    s.add_argument("--min-effect", type=float, default=0.0, help="ignore drops smaller than this fraction")
    s.add_argument("--asr", choices=["target_correct", "both_correct", "all"], help="default: the protocol's")
    s.add_argument("--ranking-cell-only", action="store_true", help="compare the ranking cell only")
    s.add_argument(
        "--level",
        choices=["checkpoint", "recipe"],
        default="checkpoint",
        help="checkpoint: these models, images as the sample (default); recipe: seed groups of 2+ runs each, "
        "Welch's t test on run rates (seed-to-seed spread as the noise)",
    )
    s.add_argument("--all-cells", action="store_true", help="print every cell, not only the significant ones")
    s.add_argument(
        "--allow-precision-mismatch",
        action="store_true",
        help="compare records computed in different precisions (to measure what bf16 changes)",
    )
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("plots", help="ASR vs eps, ASR vs smoothness/similarity (Pearson r, OLS R^2), heatmap")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--protocol", default="cifar10", help="one protocol (name or name-vN)")
    s.add_argument("--dir", help="leaderboard directory")
    s.add_argument("--format", choices=["png", "pdf", "svg"], default="png")
    s.set_defaults(func=cmd_plots)

    s = sub.add_parser("cite", help="BibTeX for the benchmark, the seed paper and any record")
    s.add_argument("records", nargs="*", help="record JSON files")
    s.set_defaults(func=cmd_cite)

    s = sub.add_parser("recipes", help="list surrogate training recipes")
    s.add_argument("--show", metavar="NAME", help="print one recipe's full configuration")
    s.set_defaults(func=cmd_recipes)

    s = sub.add_parser("train", help="train a surrogate with a recipe; extra --name value pairs override its config",
                       allow_abbrev=False)  # fmt: skip
    s.add_argument("recipe", help="recipe name (see `transferbench recipes`)")
    s.add_argument("--out", required=True, help="submission folder to write")
    s.add_argument("--data", choices=["cifar10", "digits"], default="cifar10")
    s.add_argument("--data-dir", help="local CIFAR-10 mirror")
    s.add_argument("--arch", default="cifar_resnet18")
    s.add_argument("--arch-kwargs", default="{}", help="JSON object of architecture arguments")
    s.add_argument("--device", default="auto")
    s.add_argument("--seeds", metavar="S1,S2,...",
                   help="train once per seed, each into OUT-s<seed>, and assemble them as the seed group OUT "
                        "(members already trained with the same settings are kept: a rerun resumes; "
                        "--overwrite trains every seed again)")  # fmt: skip
    s.add_argument("--overwrite", action="store_true")
    _deterministic_option(s)
    s.set_defaults(func=cmd_train)
    s = sub.add_parser("group", help="assemble trained submissions into a seed group (one recipe) or an ensemble")
    s.add_argument("out", help="group folder to write")
    s.add_argument("members", nargs="+", help="single submission folders (members are named after the folders)")
    s.add_argument("--kind", choices=["seed-group", "ensemble"], default="seed-group",
                   help="seed-group: seeds of one recipe, each evaluated, mean and std reported (default); "
                        "ensemble: logits averaged into one surrogate")  # fmt: skip
    s.add_argument("--name", help="submission name (default: the folder's name)")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_group)

    from bench import perf

    s = sub.add_parser("benchmark", help="speed: our attacks vs torchattacks, metrics, whole protocol, bf16 agreement")
    perf.add_arguments(s)
    s.set_defaults(func=perf.run)

    s = sub.add_parser("leaderboard", help="print the ranked local leaderboard")
    s.add_argument("--protocol", help="only this protocol (name, or name-vN for one version)")
    s.add_argument("--dir", help="leaderboard directory (default: $TRANSFERBENCH_HOME/leaderboard)")
    s.add_argument("--csv", action="store_true", help="same as --format csv")
    s.add_argument("--format", choices=["text", "csv", "md", "latex", "html"], default="text")
    s.add_argument("--table", choices=["ranked", "long", "wide"], default="ranked", help="for csv/md/latex")
    s.add_argument("--out", help="write to this file (atomically) instead of stdout")
    s.set_defaults(func=cmd_leaderboard)

    s = sub.add_parser("demo", help="offline smoke run on scikit-learn digits (a few minutes on a CPU)")
    s.add_argument("--out", help="leaderboard directory (default: $TRANSFERBENCH_HOME/leaderboard)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_demo)
    return p


def _hub_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--repo", help="Hub dataset repo of the leaderboard (default: $TRANSFERBENCH_HUB_REPO)")
    s.add_argument("--endpoint", help="Hub endpoint (default: $TRANSFERBENCH_HUB_ENDPOINT or huggingface.co)")
    s.add_argument("--revision", default="main", help="branch of the leaderboard repo")


def _deterministic_option(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--deterministic",
        action="store_true",
        help="PyTorch's deterministic mode: two runs on one GPU give identical bits (slower; CPU runs always do)",
    )


def _evaluate_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("path", help="submission folder with config.json + model.safetensors, or hf://owner/repo@revision")
    s.add_argument("--protocol", default="cifar10", help="protocol name (see `transferbench protocols`)")
    s.add_argument("--data-dir", help="local data mirror (else TRANSFERBENCH_CIFAR10_DIR, else the Hub)")
    s.add_argument("--weights-dir", help="local mirror of target weights (else TRANSFERBENCH_WEIGHTS_DIR, cache, URL)")
    s.add_argument("--targets", nargs="+", help="evaluate only these targets (the record's protocol hash changes)")
    s.add_argument("--out", help="leaderboard directory (default: $TRANSFERBENCH_HOME/leaderboard)")
    s.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    s.add_argument(
        "--batch-size",
        type=positive_int,
        help="images per batch (default: from free GPU memory; 256 on CPU or with --deterministic)",
    )
    s.add_argument("--precision", choices=["fp32", "bf16"], help="default: the protocol's (records say if it differs)")
    s.add_argument("--channels-last", action="store_true", help="channels_last memory layout (a GPU speed option)")
    _deterministic_option(s)
    s.add_argument(
        "--limit",
        type=positive_int,
        help="only a class-balanced N of the list's images: round robin over the classes (record marked partial)",
    )
    s.add_argument("--overwrite", action="store_true", help="replace an existing record of this surrogate")
    s.add_argument("--quiet", action="store_true", help="no progress bars")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "train" and getattr(args, "targets_command", None) != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.params = extra
    if getattr(args, "deterministic", False):  # cuBLAS reads it when it creates its workspace: before any CUDA work
        reserve_cublas_workspace()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        for noisy in ("httpx", "httpx2", "httpcore"):  # the Hub client logs every request at INFO
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except (ValueError, RuntimeError, FileNotFoundError, FileExistsError, KeyError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
