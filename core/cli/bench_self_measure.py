"""bench self-measure: the self-measurement on synthetic members, its time and memory.

    python -m core bench self-measure --members N [--planted 20] [--seed 0] [--blocks K] [--json OUT]

Prints seconds, peak memory, and how many planted look-alike pairs at or above approve_at were
found (core.benchmarks.self_measure); --json writes the whole report. --blocks K measures only the
first K blocks with every photo loaded (the whole run's memory; its time extrapolated from them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from core.cli import command

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def register(subparsers) -> argparse.ArgumentParser:
    parser = command(
        subparsers, "self-measure", "time and memory of the self-measurement on N synthetic members", run
    )
    parser.add_argument("--members", type=int, required=True, help="synthetic members (two photos each)")
    parser.add_argument("--planted", type=int, default=20, help="look-alike pairs planted (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos-per-member", type=int, default=2, choices=(1, 2))
    parser.add_argument(
        "--block-rows", type=int, default=None, help="rows per block (SELF_MEASURE_BLOCK_ROWS)"
    )
    parser.add_argument(
        "--blocks",
        type=int,
        default=None,
        help="measure only the first K blocks (the largest, both genders); time extrapolated",
    )
    parser.add_argument("--work-dir", default=None, help="where the temporary database goes (default: /tmp)")
    parser.add_argument("--json", dest="json_out", default=None, help="write the report here")
    return parser


def run(args) -> int:
    if args.members < 2:
        print("--members must be at least 2.", file=sys.stderr)
        return 1
    from core.benchmarks.self_measure import run_benchmark

    report = run_benchmark(
        args.members,
        planted=args.planted,
        seed=args.seed,
        work_dir=Path(args.work_dir) if args.work_dir else None,
        block_rows=args.block_rows,
        photos_per_member=args.photos_per_member,
        blocks=args.blocks,
    )
    if "pairs_share" in report:
        print(
            f"{report['members']:,} members ({report['photos']:,} photos), blocks {report['blocks']} "
            f"({report['pairs_share']:.2%} of {report['compared_pairs']:,} pairs): "
            f"{report['scan_seconds_measured']:.1f} s scanning them after {report['load_seconds']:.1f} s "
            f"loading; whole run extrapolated {report['seconds_extrapolated']:.0f} s "
            f"({report['cpu_seconds_extrapolated']:.0f} CPU-s); peak {report['peak_mb']:.0f} MB; "
            f"planted look-alikes in those blocks found {report['planted_found']} of {report['planted']}"
        )
    else:
        print(
            f"{report['members']:,} members ({report['photos']:,} photos, {report['compared_pairs']:,} pairs): "
            f"{report['seconds']:.1f} s measuring ({report['populate_seconds']:.1f} s making them), "
            f"peak {report['peak_mb']:.0f} MB; planted look-alikes found {report['planted_found']} of "
            f"{report['planted']}; {report['at_approve']:,} pairs at approve_at, bound {report['fmr_upper']:.3g}"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return 0 if report["planted_found"] == report["planted"] else 3
