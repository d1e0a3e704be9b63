"""faceverify bench <name>: the benchmarks, each against the shipped model (models/DEFAULT).

Each prints its figures and, with --json, writes them; the exit code is 0 when the benchmark's
target was met (1 when not, 2 when its input is missing).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.cli import command, group


def _write_json(path: Path | None, figures: dict, indent: int = 2) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=indent) + "\n", encoding="utf-8")
        print(f"wrote {path}")


def _json_option(parser) -> None:
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")


def register(subparsers) -> None:
    from core import config

    lfw_images = config.SHARED_LFW_DEV_DIR / "images"
    benches = group(subparsers, "bench", "the benchmarks: accuracy, speed, load, fraud and capture checks")

    verification = command(
        benches,
        "verification",
        "verification accuracy and speed beside the bare pretrained pipeline, on a pairs file",
        run_verification,
    )
    verification.add_argument("--pairs", type=Path, help="file_x, file_y, Decision (Yes/No)")
    verification.add_argument("--images", type=Path, help="the photos the pairs name")
    verification.add_argument("--people", type=Path, help="person, gender: gender figures and groups")
    verification.add_argument("--json", type=Path, required=True, help="where to write the figures")
    verification.add_argument("--model", help="model version (default: models/DEFAULT)")
    verification.add_argument("--baseline-pairs", type=int, default=200, help="pairs timed for the baseline")
    verification.add_argument("--limit", type=int, help="use only the first N pairs")
    verification.add_argument("--sample", type=int, help="a balanced random N pairs (seeded) from PAIRS.csv")
    verification.add_argument(
        "--set", action="append", default=[], help="NAME=DIR with images/, pairs.csv, people.csv (repeatable)"
    )
    verification.add_argument(
        "--set-pairs", action="append", default=[], help="NAME=FILE: that set's pairs file"
    )
    verification.add_argument(
        "--unseen-only", action="store_true", help="leave out pairs of people the model was trained on"
    )
    verification.add_argument(
        "--gender-sample", type=int, help="score gender on a seeded N photos of each set"
    )

    search = command(
        benches, "search", "1:N search latency over N members, and that it finds people", run_search
    )
    search.add_argument("--members", type=int, default=100_000)
    search.add_argument("--queries", type=int, default=300)
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--planted-people", type=int, default=12, help="real sample people among them")
    search.add_argument("--seed", type=int, default=7)
    _json_option(search)

    scale = command(
        benches,
        "scale",
        "fill a database to N members and a year of results, time every page's functions",
        run_scale,
    )
    scale.add_argument("--members", type=int, default=2000)
    scale.add_argument("--url", required=True, help="an empty database (it is filled)")
    scale.add_argument("--store", type=Path, help="photo store folder (default: a temporary one)")
    scale.add_argument("--runs", type=int, default=3, help="each page timed this often, worst kept")
    scale.add_argument(
        "--api-calls",
        type=int,
        default=200,
        help="verifications, histories and searches over the API (0: none)",
    )
    scale.add_argument(
        "--no-fill", action="store_true", help="time a database an earlier run filled (with its --store)"
    )
    _json_option(scale)

    fraud = command(
        benches, "fraud", "the fraud checks (reuse, identity ceiling, pose) on held-out people", run_fraud
    )
    fraud.add_argument("--images", type=Path, default=lfw_images)
    fraud.add_argument("--every", type=int, default=1, help="analyse every Nth photo only")
    fraud.add_argument(
        "--train-copies", type=int, default=150, help="training photos copied to choose the limit"
    )
    _json_option(fraud)

    capture = command(
        benches, "capture", "the capture check: build the synthetic set, report figures", run_capture
    )
    capture_commands = capture.add_subparsers(dest="capture_command", required=True, metavar="COMMAND")
    build = command(
        capture_commands,
        "build",
        "make the synthetic set (slow: every variant through the path)",
        run_capture,
    )
    build.add_argument("--images", type=Path, default=lfw_images)
    build.add_argument(
        "--out", type=Path, help="default data/runtime/capture_set.npz (capture_extra.npz with --extra-of)"
    )
    build.add_argument(
        "--extra-of",
        type=Path,
        help="build the extra training photos (beyond those of this built set): `train capture-check` reads both",
    )
    build.add_argument("--model", help="model version whose people split is used (default: models/DEFAULT)")
    build.add_argument("--workers", type=int, default=2)
    report = command(
        capture_commands, "report", "figures of the capture check on the held-out people", run_capture
    )
    report.add_argument("--set", type=Path, default=None, help="default data/runtime/capture_set.npz")
    report.add_argument("--pairs", type=Path, help="unmodified pairs for the automation effect")
    report.add_argument("--model")
    report.add_argument("--timing-photos", type=int, default=200)
    _json_option(report)

    attack = command(
        benches,
        "presentation-attack",
        "whether a screen/print detector model package is worth shipping, on simulated attacks",
        run_presentation_attack,
    )
    attack.add_argument("--images", type=Path, default=lfw_images)
    attack.add_argument("--models", type=Path, required=True, help="the package's models/ folder")
    attack.add_argument("--every", type=int, default=3, help="score every Nth photo only")
    _json_option(attack)

    load = command(benches, "load", "sustained verifications per second through the HTTP API", run_load)
    load.add_argument("--seconds", type=float, default=60.0)
    load.add_argument("--rate", type=float, default=10.0, help="verifications per second")
    load.add_argument("--workers", type=int, default=24, help="concurrent client connections at most")
    load.add_argument("--url", help="a running server on loopback (default: start one)")
    load.add_argument("--key", help="backend key for --url")
    load.add_argument("--reader-key", help="reader (or backend) key for --url (default: --key)")
    load.add_argument("--db-url", help="database for the server started here (default: temporary SQLite)")
    load.add_argument("--server-log", type=Path, help="keep the started server's log here")
    _json_option(load)
    load.set_defaults(parser=load)

    combined = command(
        benches,
        "load-combined",
        "API load, a batch on the queue and an object-store outage at once, on MariaDB",
        run_load_combined,
    )
    combined.add_argument("--db-url", required=True, help="MariaDB URL (the database is created if missing)")
    combined.add_argument("--broker-url", help="redis://... or amqp://... (default: JOB_BROKER_URL)")
    combined.add_argument("--seconds", type=float, default=40.0, help="length of the API load")
    combined.add_argument("--rate", type=float, default=2.0, help="API verifications per second asked")
    combined.add_argument("--batch-repeats", type=int, default=4, help="batch = the 20 sample members x this")
    combined.add_argument(
        "--store-down-s", type=float, default=5.0, help="how long the object store stays down"
    )
    combined.add_argument("--logs", type=Path, help="keep the processes' logs here")
    _json_option(combined)
    combined.set_defaults(parser=combined)

    scale = command(
        benches, "scale-out", "verifications per second of one API worker against two", run_scale_out
    )
    scale.add_argument("--seconds", type=float, default=30.0, help="length of each phase (4 per round)")
    scale.add_argument(
        "--per-worker", type=int, default=4, help="client connections per worker in use (default 4)"
    )
    scale.add_argument("--db-url", help="database (default: a temporary SQLite file)")
    scale.add_argument("--rounds", type=int, default=1, help="A B B A rounds (default 1)")
    scale.add_argument("--no-pin", action="store_true", help="do not hold each worker to one core")
    _json_option(scale)

    imports = command(
        benches, "imports", "importing N members with their photos into a fresh database", run_imports
    )
    imports.add_argument("--members", type=int, default=1000)
    imports.add_argument(
        "--url",
        default=None,
        help="database URL (default mysql+pymysql://root@127.0.0.1:3306/faceverify_bench)",
    )
    imports.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")

    port = command(
        benches,
        "dlib-port",
        "the Keras port of dlib's ResNet beside dlib: load time and per-face timings",
        run_dlib_port,
    )
    port.add_argument("--calls", type=int, default=30, help="timed calls per row")

    # Benchmarks whose command line lives in a module of its own.
    from core.cli import bench_api_memory, bench_profiles, bench_self_measure

    bench_profiles.register(benches)
    bench_api_memory.register(benches)
    bench_self_measure.register(benches)


def _named(parser, values: list[str], flag: str) -> dict[str, str]:
    """NAME=PATH options as {name: path}."""
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            parser.error(f"{flag} takes NAME=PATH, got {value!r}")
        out[name] = path
    return out


def run_verification(args) -> int:
    from core.benchmarks.verification import PairSet, run_sets

    parser = args.parser
    sets = {name: Path(folder) for name, folder in _named(parser, args.set, "--set").items()}
    set_pairs = _named(parser, args.set_pairs, "--set-pairs")
    if unknown := set(set_pairs) - set(sets):
        parser.error(f"--set-pairs names no --set: {', '.join(sorted(unknown))}")
    chosen: dict[str | None, PairSet] = {}
    if args.pairs or args.images:
        if not (args.pairs and args.images):
            parser.error("--pairs and --images go together")
        chosen[None] = PairSet(args.pairs, args.images, args.people)
    elif not sets:
        parser.error("give --pairs and --images, or one --set NAME=DIR or more")
    for name, folder in sets.items():
        pairs = Path(set_pairs.get(name, folder / "pairs.csv"))
        chosen[name] = PairSet(pairs, folder / "images", folder / "people.csv")
    for name, one in chosen.items():
        missing = [str(p) for p in (one.pairs, one.images) if not Path(p).exists()]
        if missing:
            parser.error(f"{name or 'benchmark'}: not found: {', '.join(missing)}")

    done = run_sets(
        chosen,
        args.json,
        model=args.model,
        baseline_pairs=args.baseline_pairs,
        limit=args.limit,
        sample=args.sample,
        unseen_only=args.unseen_only,
        gender_sample=args.gender_sample,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(done.report, indent=2))
    print(json.dumps(done.report, indent=2))
    if done.summary:
        print(done.summary)
    return 0


def run_dlib_port(args) -> int:
    from core.benchmarks import dlib_port

    dlib_port.run(max(args.calls, 1))
    return 0


def run_search(args) -> int:
    from core.benchmarks.search import print_report, run

    try:
        report = run(args.members, args.queries, args.k, args.planted_people, args.seed)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print_report(report)
    _write_json(args.json, report)
    return 0 if report["meets_target"] and report["planted_all_found"] else 1


def run_scale(args) -> int:
    from core.benchmarks.scale import print_report, run
    from core.dashboard.page_runs import page_runs

    if args.members < 1:
        print("--members must be at least 1", file=sys.stderr)
        return 2
    report = run(
        args.members,
        args.url,
        page_runs,
        args.store,
        max(args.runs, 1),
        fill_first=not args.no_fill,
        api_calls=max(args.api_calls, 0),
    )
    print_report(report)
    _write_json(args.json, report)
    return 0 if report["targets_met"] else 1


def run_fraud(args) -> int:
    from core.benchmarks.fraud import run

    if not args.images.is_dir():
        print(f"No photos at {args.images}; give --images.", file=sys.stderr)
        return 2
    figures = run(args.images, max(args.every, 1), args.train_copies)
    print(json.dumps(figures, indent=1))
    _write_json(args.json, figures, indent=1)
    return 0


def run_capture(args) -> int:
    from core.benchmarks.capture import DEFAULT_EXTRA, DEFAULT_SET, build, print_report, report

    if args.capture_command == "build":
        out = args.out or (DEFAULT_EXTRA if args.extra_of else DEFAULT_SET)
        build(args.images, out, args.model, args.workers, args.extra_of)
        return 0
    figures = report(args.set or DEFAULT_SET, args.pairs, args.model, args.timing_photos)
    print_report(figures)
    _write_json(args.json, figures, indent=1)
    return 0


def run_presentation_attack(args) -> int:
    from core.benchmarks.presentation_attack import MODELS, run

    missing = [n for n in MODELS if not (args.models / f"{n}.json").exists()]
    if not args.images.is_dir() or missing:
        print(f"Need photos at {args.images} and {missing or MODELS} in {args.models}.", file=sys.stderr)
        return 2
    figures = run(args.images, args.models, max(args.every, 1))
    print(json.dumps(figures, indent=1))
    _write_json(args.json, figures, indent=1)
    return 0


def run_load(args) -> int:
    from core.benchmarks.load_test import MAX_RATE, MAX_SECONDS, Server, print_report, run

    if not 0 < args.seconds <= MAX_SECONDS or not 0 < args.rate <= MAX_RATE:
        args.parser.error(f"--seconds must be in (0, {MAX_SECONDS}] and --rate in (0, {MAX_RATE}]")
    if args.url and not args.key:
        args.parser.error("--url needs --key")
    server = None
    try:
        if args.url:
            url, key, reader_key = args.url, args.key, args.reader_key or args.key
        else:
            server = Server(args.db_url, args.server_log)
            print(f"starting the API on {server.url} (loading the model) ...", flush=True)
            key, reader_key = server.start()
            url = server.url
        report = run(url, key, reader_key, args.seconds, args.rate, max(1, args.workers))
    finally:
        if server is not None:
            server.stop()
    print_report(report)
    _write_json(args.json, report)
    return 0 if report["rate_held"] and report["all_stored"] else 1


def run_load_combined(args) -> int:
    from core import config
    from core.benchmarks.load_combined import print_report, run_combined
    from core.benchmarks.load_test import MAX_RATE, MAX_SECONDS

    broker = args.broker_url or config.setting("JOB_BROKER_URL")
    if not broker:
        args.parser.error("--broker-url (or JOB_BROKER_URL) is needed")
    if not 0 < args.seconds <= MAX_SECONDS or not 0 < args.rate <= MAX_RATE or args.batch_repeats < 1:
        args.parser.error(
            f"--seconds must be in (0, {MAX_SECONDS}], --rate in (0, {MAX_RATE}], --batch-repeats >= 1"
        )
    report = run_combined(
        args.db_url,
        broker,
        seconds=args.seconds,
        rate=args.rate,
        batch_repeats=args.batch_repeats,
        store_down_s=args.store_down_s,
        log_dir=args.logs,
    )
    print_report(report)
    _write_json(args.json, report)
    return 0 if report["ok"] else 1


def run_scale_out(args) -> int:
    from core.benchmarks.scale_out import measure

    report = measure(args.seconds, args.per_worker, args.db_url, args.rounds, pin=not args.no_pin)
    _write_json(args.json, report)
    return 0 if report["ok"] else 1


def run_imports(args) -> int:
    from core.benchmarks.imports import DEFAULT_URL, measure

    return 0 if measure(args.members, args.url or DEFAULT_URL, args.keep) else 1
