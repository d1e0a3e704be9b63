"""bench profiles: profile verification on profiles built from real LFW people (core.benchmarks.profiles).

Prints the headline figures and, with --json, writes them all; exit code 0 when the targets were
met, 1 when not, 2 when the input is missing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HELP = "profile verification: strangers' photos swapped in, group photos, time per profile"


def _number_or_none(value: str) -> float | None:
    return None if value.strip().lower() in {"none", "off", ""} else float(value)


def _threshold(value: str) -> float | None:
    """A threshold to compare: a number, 'model' (the version's own: 0) or 'setting' (None)."""
    text = value.strip().lower()
    if text == "model":
        return 0.0
    return None if text in {"setting", "settings", ""} else float(value)


def register(subparsers) -> None:
    """Add the `profiles` command to these subparsers (the bench group's)."""
    from core import config

    lfw = config.SHARED_LFW_DEV_DIR
    parser = subparsers.add_parser("profiles", help=HELP, description=HELP)
    parser.add_argument("--images", type=Path, default=lfw / "images", help="LFW-named photos")
    parser.add_argument("--people", type=Path, default=lfw / "people.csv", help="person,gender CSV")
    parser.add_argument(
        "--set",
        dest="people_set",
        choices=["heldout", "train", "all"],
        default="heldout",
        help="whose profiles: the model version's held-out people (default), its training people, or all",
    )
    parser.add_argument("--model", help="model version (default: models/DEFAULT)")
    parser.add_argument("--profiles-per-person", type=int, default=20)
    parser.add_argument("--selfies-per-person", type=int, default=3)
    parser.add_argument(
        "--photos-per-person", type=int, default=30, help="profile photos drawn from, per person"
    )
    parser.add_argument(
        "--swap-share", type=float, default=0.2, help="share of photos swapped for a stranger's"
    )
    parser.add_argument("--group-share", type=float, default=0.15, help="share of photos made group photos")
    parser.add_argument(
        "--approve-at",
        type=_threshold,
        nargs="+",
        default=None,
        help="rules to compare: a profile photo's approval similarity ('model': the version's own; "
        "default: PROFILE_APPROVE_AT), never below the version's approve point",
    )
    parser.add_argument(
        "--reject-below",
        type=_threshold,
        nargs="+",
        default=None,
        help="rules to compare: the confident non-match similarity ('model': the version's own; "
        "default: PROFILE_REJECT_BELOW), never below the version's reject point",
    )
    parser.add_argument(
        "--corroborate",
        type=_number_or_none,
        nargs="+",
        default=None,
        help="rules to compare: corroborate_from ('none': off; default: PROFILE_CORROBORATE_FROM); every approve-at with every reject-below "
        "and every corroborate, the first is reported (default: the product's rule)",
    )
    parser.add_argument("--timing-profiles", type=int, default=40, help="whole profiles of 6 + selfie timed")
    parser.add_argument(
        "--timing-only",
        action="store_true",
        help="only time whole profiles (a new member's and a stored one verified again), no accuracy",
    )
    parser.add_argument("--limit-people", type=int, help="only the first N people (a quick run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.set_defaults(run=run)


def run(args) -> int:
    from core.benchmarks import profiles
    from core.workflows.profile_rule import SETTING

    for path in (args.images, args.people):
        if not path.exists():
            print(f"{path} does not exist (set LFW_DEV_DIR or pass --images/--people)", file=sys.stderr)
            return 2
    figures = profiles.run(
        args.images,
        args.people,
        people_set=args.people_set,
        model=args.model,
        profiles_per_person=args.profiles_per_person,
        selfies_per_person=args.selfies_per_person,
        photos_per_person=args.photos_per_person,
        swap_share=args.swap_share,
        group_share=args.group_share,
        rules=[
            (approve_at, reject_below, corroborate)
            for approve_at in (args.approve_at or [None])
            for reject_below in (args.reject_below or [None])
            for corroborate in (args.corroborate or [SETTING])
        ],
        timing_profiles=args.timing_profiles,
        seed=args.seed,
        limit_people=args.limit_people,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
        timing_only=args.timing_only,
    )
    if args.timing_only:
        print(json.dumps({"timing": figures["timing"], "meets_targets": figures["meets_targets"]}, indent=2))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")
        return 0 if all(figures["meets_targets"].values()) else 1
    result = figures["result"]
    headline = {
        k: result[k]
        for k in (
            "rule",
            "swapped_caught",
            "swapped_approved_automatically",
            "genuine_wrongly_flagged",
            "members_verified_without_a_person",
            "member_found_in_group",
            "group_without_member_flagged",
            "profiles_with_stranger_verified",
        )
    }
    headline["by_gender"] = {
        g: {k: v for k, v in s.items() if k != "counts"} for g, s in result["by_gender"].items()
    }
    headline["counts"] = {
        k: result["counts"].get(k, 0)
        for k in (
            "swapped",
            "swapped_caught",
            "genuine",
            "genuine_wrongly_flagged",
            "group_with_member",
            "member_found_in_group",
        )
    }
    headline["timing"] = figures["timing"]
    headline["meets_targets"] = figures["meets_targets"]
    print(json.dumps(headline, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0 if all(figures["meets_targets"].values()) else 1
