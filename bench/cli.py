"""``transferbench``: a thin command line over the library (it parses, calls, prints)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

import torch

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


def _target_names(args: argparse.Namespace) -> list[str]:
    from targets import TARGETS

    if getattr(args, "names", None):
        return list(args.names)
    if getattr(args, "protocol", None):
        return list(get_protocol(args.protocol).targets)
    return list(TARGETS)


def cmd_targets_list(args: argparse.Namespace) -> int:
    from targets import TARGETS

    print(f"{'target':<22}{'family':<12}{'architecture':<18}{'license':<14}source")
    for name in _target_names(args):
        spec = TARGETS.get(name)
        src = getattr(spec.source, "url", None) or f"$TRANSFERBENCH_HOME/{getattr(spec.source, 'relpath', '')}"
        print(f"{name:<22}{spec.family:<12}{spec.architecture:<18}{spec.license or '-':<14}{src}")
    return 0


def cmd_targets_fetch(args: argparse.Namespace) -> int:
    from targets import TARGETS
    from targets.zoo import resolve_weights

    for name in _target_names(args):
        path, sha = resolve_weights(TARGETS.get(name), args.weights_dir)
        print(f"{name:<22}{sha[:16]}  {path}")
    return 0


def cmd_targets_verify(args: argparse.Namespace) -> int:
    """sha256 of every weights file, then clean accuracy on the protocol's full image list vs the pinned value."""
    from bench.runner import load_protocol_data, select_images
    from targets import TARGETS, load_target

    protocol = get_protocol(args.protocol)
    images = select_images(protocol, load_protocol_data(protocol, args.data_dir), None)
    data_sha = images.content_sha256()
    x, y = images.images(), images.labels
    print(f"{protocol.id}: {len(images)} images, data sha256 {data_sha[:16]} ({images.source})")
    failed = 0
    for name in args.names or protocol.targets:
        device = _device(args.device)
        target = load_target(name, weights_dir=args.weights_dir, device=device)
        with torch.no_grad():
            preds = torch.cat([target.model(x[i : i + 500].to(device)).argmax(1).cpu() for i in range(0, len(y), 500)])
        acc = float((preds == y).float().mean())
        expected = dict(TARGETS.get(name).expected_accuracy).get(data_sha)
        ok = expected is None or abs(acc - expected) <= TARGET_TOLERANCE
        failed += not ok
        status = "no pinned accuracy for this data" if expected is None else ("ok" if ok else "MISMATCH")
        pinned = "" if expected is None else f" (pinned {100 * expected:.2f}%)"
        print(f"{name:<22}sha256 ok {target.sha256[:12]}  accuracy {100 * acc:.2f}%{pinned}  {status}")
    return 1 if failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from bench.runner import evaluate, load_protocol_data
    from leaderboard.store import LocalStore
    from surrogates import load_surrogate
    from targets import load_targets

    protocol = get_protocol(args.protocol)
    device = _device(args.device)
    names = args.targets or list(protocol.targets)
    unknown = [n for n in names if n not in protocol.targets]
    if unknown:
        print(f"error: {unknown} are not targets of {protocol.id} ({', '.join(protocol.targets)})", file=sys.stderr)
        return 2
    surrogate = load_surrogate(args.path, device=device)
    data = load_protocol_data(protocol, args.data_dir)
    tg = load_targets(names, weights_dir=args.weights_dir, device=device)
    subset = protocol if not args.targets else _with_targets(protocol, names)
    record = evaluate(surrogate, subset, data, tg, device=device, batch_size=args.batch_size, limit=args.limit,
                      progress=not args.quiet)  # fmt: skip
    path = LocalStore(args.out).add(record, overwrite=args.overwrite)
    print(f"score {100 * record.score['mean']:.2f} ({protocol.ranking_cell}, mean ASR over targets); record: {path}")
    return 0


def _with_targets(protocol, names):  # type: ignore[no-untyped-def]
    """A target subset changes the protocol, hence its hash: such records never rank beside full ones."""
    from dataclasses import replace

    return replace(protocol, targets=tuple(names))


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from leaderboard.store import LocalStore
    from leaderboard.table import format_table, ranked_table

    df = ranked_table(LocalStore(args.dir).records(args.protocol))
    if args.csv:
        df.to_csv(sys.stdout, index=False)
    else:
        print(format_table(df))
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

    s = sub.add_parser("targets", help="list, fetch and verify the target zoo")
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

    s = sub.add_parser("evaluate", help="evaluate a surrogate submission folder (or hf://owner/repo@rev)")
    s.add_argument("path", help="submission folder with config.json + model.safetensors, or hf://owner/repo@revision")
    s.add_argument("--protocol", default="cifar10", help="protocol name (see `transferbench protocols`)")
    s.add_argument("--data-dir", help="local data mirror (else TRANSFERBENCH_CIFAR10_DIR, else the Hub)")
    s.add_argument("--weights-dir", help="local mirror of target weights (else TRANSFERBENCH_WEIGHTS_DIR, cache, URL)")
    s.add_argument("--targets", nargs="+", help="evaluate only these targets (the record's protocol hash changes)")
    s.add_argument("--out", help="leaderboard directory (default: $TRANSFERBENCH_HOME/leaderboard)")
    s.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    s.add_argument("--batch-size", type=positive_int, default=256)
    s.add_argument("--limit", type=positive_int, help="only the first N images of the list (record marked partial)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing record of this surrogate")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("leaderboard", help="print the ranked local leaderboard")
    s.add_argument("--protocol", help="only this protocol (name, or name-vN for one version)")
    s.add_argument("--dir", help="leaderboard directory (default: $TRANSFERBENCH_HOME/leaderboard)")
    s.add_argument("--csv", action="store_true", help="CSV instead of a text table")
    s.set_defaults(func=cmd_leaderboard)

    s = sub.add_parser("demo", help="offline smoke run on scikit-learn digits (a few minutes on a CPU)")
    s.add_argument("--out", help="leaderboard directory (default: $TRANSFERBENCH_HOME/leaderboard)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except (ValueError, RuntimeError, FileNotFoundError, FileExistsError, KeyError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
