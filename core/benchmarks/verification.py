"""Accuracy and speed benchmark of the product's path beside the bare pretrained pipeline.

run_sets({name: PairSet(pairs, images, people)}, reliability_base, ...) -> SetsReport, one engine
run(pairs_csv, images, people_csv, ...) -> dict          one set's figures

Command line (core/cli/bench.py):
python -m core bench verification --pairs PAIRS.csv --images DIR [--people PEOPLE.csv] --json OUT.json
python -m core bench verification --set lfw=../shared/data/lfw_dev --set eastasian=../shared/data/eastasian_dev
                                  [--set-pairs eastasian=FILE] [--unseen-only] --json OUT.json

PAIRS.csv: file_x (gallery), file_y (verification), Decision (Yes/No).
PEOPLE.csv: person, gender; gender is scored on every image in DIR whose person (the LFW file
name without _NNNN.jpg) is listed.
Latency is per pair, warm, from file bytes to decision, nothing reused between pairs; the
baseline (dlib-bin's own embedding, same detection) is timed interleaved in the same run so the
ratio survives a noisy machine. Throughput is the batch entry point's.

--set NAME=DIR (repeatable) runs a development set laid out as DIR/images, DIR/pairs.csv,
DIR/people.csv; --set-pairs NAME=FILE takes that set's pairs from FILE instead (e.g. a model
version's heldout_pairs_<set>.csv); --unseen-only leaves out pairs of people the model trained on.
Each set's figures are also given group by group (people.csv: gender, and group / population and
age or age_band where present; a pair belongs to a group when both its people do), as NIST FRVT's
demographic reports do: FMR at approve_at on the group's impostor pairs, FNMR at reject_below, AUC,
calibration error, gender accuracy; one plain table for all sets, printed and in the JSON.

Also: the calibration error of the similarity (ECE) and a reliability plot (PNG beside the JSON),
what the decision policy does (automation and the errors of automatic decisions at the model's
two operating points), the time of each stage, each identity network alone on the same pairs
(dlib alone, SFace alone: AUC and FNMR at FMR 0.1% need no threshold; accuracy at each network's
published threshold, dlib's 0.6 and OpenCV's 0.363 cosine for SFace), and the process's memory.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LFW_NAME = re.compile(r"^(?P<person>.+)_\d{4}\.\w+$")


class Progress:
    """A one-line progress bar on stderr (stdout stays clean for piping)."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.start = label, max(total, 1), time.perf_counter()

    def __call__(self, done: int) -> None:
        if done % max(1, self.total // 100) and done != self.total:
            return
        width = 30
        filled = int(width * done / self.total)
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        sys.stderr.write(
            f"\r{self.label:<22} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} {rate:6.1f}/s"
        )
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def read_pairs(path: Path) -> pd.DataFrame:
    pairs = pd.read_csv(path)
    missing = {"file_x", "file_y", "Decision"} - set(pairs.columns)
    if missing:
        raise SystemExit(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    pairs["label"] = pairs["Decision"].astype(str).str.strip().str.lower().map({"yes": 1, "no": 0})
    if pairs["label"].isna().any():
        raise SystemExit(f"{path}: Decision must be Yes or No")
    return pairs


def percentile(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def run(
    pairs_csv: Path,
    images: Path,
    people_csv: Path | None,
    model: str | None = None,
    baseline_pairs: int = 200,
    limit: int | None = None,
    sample: int | None = None,
    reliability_png: Path | None = None,
    engine=None,
    set_name: str | None = None,
    unseen_only: bool = False,
    gender_sample: int | None = None,
) -> dict:
    from core.benchmarks import baseline
    from core.training.fitting import gender_metrics, verification_metrics
    from core.verification.calibration import expected_calibration_error
    from core.verification.engine import Engine
    from core.verification.policy import policy_figures
    from core.verification.result import AUTO_APPROVED, AUTO_REJECTED

    pairs = read_pairs(pairs_csv)
    # A version's held-out pairs cover every set it was trained on (and pairs across sets): a set's
    # run keeps the pairs whose two photos are in its own folder, and says how many it left.
    here = pairs.file_x.map(lambda n: (images / n).is_file()) & pairs.file_y.map(
        lambda n: (images / n).is_file()
    )
    if not here.all():
        print(
            f"{pairs_csv}: {int((~here).sum())} pairs with a photo outside {images} left out", file=sys.stderr
        )
        pairs = pairs[here]
        if not len(pairs):
            raise SystemExit(f"{pairs_csv}: no pair has both photos in {images}.")
    if sample and len(pairs) > sample:
        # a balanced random subset, e.g. of a model's held-out pairs (thousands)
        per_class = sample // 2
        pairs = pd.concat(
            [group.sample(min(per_class, len(group)), random_state=0) for _, group in pairs.groupby("label")]
        ).sample(frac=1.0, random_state=0)
    if limit:
        pairs = pairs.iloc[:limit]
    engine = engine or Engine.load(model)
    left_out = 0
    if unseen_only:
        seen = set(engine.model.metadata.get("data", {}).get("train_people", []))
        person = pairs.file_x.map(person_of).isin(seen) | pairs.file_y.map(person_of).isin(seen)
        left_out = int(person.sum())
        pairs = pairs[~person]
        if not len(pairs):
            raise SystemExit(f"{pairs_csv}: every pair has a person {engine.model_version} trained on.")
    photo_bytes = {name: (images / name).read_bytes() for name in set(pairs.file_x) | set(pairs.file_y)}

    first = pairs.iloc[0]
    for _ in range(3):  # warm both paths: graph tracing, MediaPipe and dlib initialisation
        engine.verify(photo_bytes[first.file_x], photo_bytes[first.file_y])
        baseline.verify_pair(photo_bytes[first.file_x], photo_bytes[first.file_y])

    # Per-pair path: accuracy on every pair, latency per pair. The baseline is timed afterwards on a
    # subset, not pair by pair between the product's: dlib's run between two of the product's
    # evicted its caches and raised its p95 from 39 to 58 ms (200 held-out pairs, quiet machine),
    # a cost no server running only the product pays.
    similarities, latencies, failed, automatic = [], [], 0, []
    base_latencies, stages, embeddings = [], [], []
    progress = Progress("product per pair", len(pairs))
    for k, row in enumerate(pairs.itertuples()):
        g, v = photo_bytes[row.file_x], photo_bytes[row.file_y]
        start = time.perf_counter()
        result = engine.verify(g, v)
        latencies.append((time.perf_counter() - start) * 1000)
        if result.similarity is None:
            failed += 1
        similarities.append(result.similarity if result.similarity is not None else 0.0)
        automatic.append(result.status in (AUTO_APPROVED, AUTO_REJECTED))
        stages.append(result.timings_ms)
        embeddings.append((result.gallery.embedding, result.verification.embedding))
        progress(k + 1)
    for row in pairs.iloc[:baseline_pairs].itertuples():
        start = time.perf_counter()
        baseline.verify_pair(photo_bytes[row.file_x], photo_bytes[row.file_y])
        base_latencies.append((time.perf_counter() - start) * 1000)

    labels = pairs["label"].to_numpy()
    automatic = np.array(automatic)
    decided_same = np.array(similarities) >= engine.model.threshold
    report = {
        "n_pairs": int(len(pairs)),
        "n_pairs_left_out_seen_in_training": left_out,
        "n_failed": failed,
        **{k: v for k, v in verification_metrics(similarities, labels, engine.model.threshold).items()},
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "latency_mean_ms": float(np.mean(latencies)),
        # share decided without a person (no flag, outside the uncertain band), and how right
        "automation_rate": float(automatic.mean()),
        "automatic_decision_accuracy": (
            float(np.mean(decided_same[automatic] == labels[automatic])) if automatic.any() else None
        ),
        "networks": list(engine.networks),
        "calibration_error": expected_calibration_error(similarities, labels),
        # The policy alone (operating points on the similarity, no photo flags): what it automates
        # and how often each automatic call errs.
        "policy": policy_figures(similarities, labels, engine.model.operating_points),
        "stage_ms": stage_figures(stages),
        "networks_alone": networks_alone(embeddings, labels, engine.networks, verification_metrics),
    }

    # Batch entry point: each distinct photo analysed once.
    progress = Progress("product batch", len(pairs))
    start = time.perf_counter()
    batch_sims = [
        r.similarity
        for r in engine.verify_batch(
            ((photo_bytes[r.file_x], photo_bytes[r.file_y], None) for r in pairs.itertuples()),
            progress=progress,
        )
    ]
    report["pairs_per_second"] = len(pairs) / (time.perf_counter() - start)
    report["batch_matches_per_pair"] = bool(
        np.allclose([s or 0.0 for s in batch_sims], similarities, atol=1e-4)
    )

    # Baseline accuracy: dlib's embedding of each distinct photo once (same numbers as per pair).
    progress = Progress("baseline embeddings", len(photo_bytes))
    dlib_embeddings = {}
    for k, (name, data) in enumerate(photo_bytes.items()):
        dlib_embeddings[name] = baseline.dlib_embedding(data)
        progress(k + 1)
    base_correct, base_scores = [], []
    for row in pairs.itertuples():
        a, b = dlib_embeddings[row.file_x], dlib_embeddings[row.file_y]
        distance = float(np.linalg.norm(a - b)) if a is not None and b is not None else 9.0
        base_correct.append((distance < baseline.DLIB_THRESHOLD) == bool(row.label))
        base_scores.append(-distance)
    base = verification_metrics(np.array(base_scores), labels, -baseline.DLIB_THRESHOLD)
    report.update(
        {
            "baseline_verification_accuracy": float(np.mean(base_correct)),
            "baseline_verification_auc": base["verification_auc"],
            "baseline_fnmr_at_fmr_0_001": base["fnmr_at_fmr_0_001"],
            "baseline_latency_p50_ms": percentile(base_latencies, 50),
            "baseline_latency_p95_ms": percentile(base_latencies, 95),
            "baseline_timed_pairs": len(base_latencies),
        }
    )
    if report["latency_p95_ms"] and report["baseline_latency_p95_ms"]:
        report["speedup_p95_vs_baseline"] = report["baseline_latency_p95_ms"] / report["latency_p95_ms"]

    gender_by_photo: dict = {}
    if people_csv:
        report.update(
            score_gender(engine, images, people_csv, gender_metrics, gender_by_photo, gender_sample)
        )
        report["by_group"] = figures_by_group(
            pairs, similarities, people_csv, engine.model.operating_points, gender_by_photo, set_name
        )
    cohort_ms = report["stage_ms"].get("embed_cohort")
    if cohort_ms:  # both photos' comparison with the cohort, already inside embed and the total
        report["cohort_ms_per_pair"] = cohort_ms["mean"]
        report["cohort_faces"] = len(engine.model.cohort)
    report["process_rss_mb"] = resident_mb()  # the engine, both identity networks and the baseline's dlib
    if reliability_png:
        from core.verification.calibration import reliability_plot

        title = f"{engine.model_version}: {len(labels)} pairs of {pairs_csv.name}"
        report["reliability_png"] = str(reliability_plot(similarities, labels, reliability_png, title))

    report.update(
        {
            "model_version": engine.model_version,
            "pairs_file": str(pairs_csv),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
        }
    )
    return report


def stage_figures(stages: list[dict]) -> dict:
    """p50 / mean ms of each stage of a pair (both photos), as the engine timed them."""
    names = sorted({k for t in stages for k in t if k != "total"})
    out = {}
    for name in names:
        values = [t.get(name, 0.0) for t in stages]
        out[name] = {"p50": percentile(values, 50), "mean": float(np.mean(values))}
    return out


# Each network family's own published rule, so that "alone" needs nothing chosen on these pairs.
PUBLISHED_THRESHOLDS = {"dlib": ("euclidean", 0.6), "sface": ("cosine", 0.363)}


def networks_alone(embeddings: list[tuple], labels: np.ndarray, networks, verification_metrics) -> dict:
    """AUC, FNMR at FMR 0.1% and accuracy at the published threshold of each network alone."""
    from core.verification.networks import network_class

    out, start = {}, 0
    for name in networks:
        dim, family = network_class(name).dim, network_class(name).family
        scores = []
        for a, b in embeddings:
            if a is None or b is None:
                scores.append(-9.0)
                continue
            x, y = np.asarray(a[start : start + dim], float), np.asarray(b[start : start + dim], float)
            metric, _ = PUBLISHED_THRESHOLDS[family]
            if metric == "cosine":
                scores.append(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))))
            else:
                scores.append(-float(np.linalg.norm(x - y)))
        metric, threshold = PUBLISHED_THRESHOLDS[family]
        cut = threshold if metric == "cosine" else -threshold
        figures = verification_metrics(np.array(scores), labels, cut)
        out[name] = {
            "verification_accuracy": figures["verification_accuracy"],
            "verification_auc": figures["verification_auc"],
            "fnmr_at_fmr_0_001": figures["fnmr_at_fmr_0_001"],
            "rule": f"{metric} {'distance <' if metric == 'euclidean' else 'similarity >='} {threshold}",
        }
        start += dim
    return out


def resident_mb() -> float | None:
    """This process's resident memory now (VmRSS), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def person_of(name: str) -> str | None:
    match = LFW_NAME.match(str(name))
    return match["person"] if match else None


def score_gender(
    engine,
    images: Path,
    people_csv: Path,
    gender_metrics,
    by_photo: dict | None = None,
    sample: int | None = None,
) -> dict:
    people = pd.read_csv(people_csv)
    if not {"person", "gender"} <= set(people.columns):
        raise SystemExit(f"{people_csv}: needs columns person, gender")
    gender_of = dict(zip(people.person, people.gender.str.upper(), strict=True))
    files = []
    for path in sorted(images.iterdir()):
        match = LFW_NAME.match(path.name)
        if match and match["person"] in gender_of:
            files.append(path)
    if sample and len(files) > sample:  # a seeded sample of the photos (large sets on a busy machine)
        keep = np.random.default_rng(0).choice(len(files), sample, replace=False)
        files = [files[k] for k in sorted(keep)]
    predicted, truth, failed = [], [], 0
    progress = Progress("gender", len(files))
    for first in range(0, len(files), 32):
        chunk = files[first : first + 32]
        for path, analysis in zip(chunk, engine.analyze_many(chunk), strict=True):
            if analysis.gender_probs is None:
                failed += 1
                continue
            predicted.append("MF"[int(np.argmax(analysis.gender_probs))])
            truth.append(gender_of[LFW_NAME.match(path.name)["person"]])
            if by_photo is not None:
                by_photo[path.name] = predicted[-1]
        progress(first + len(chunk))
    return {**gender_metrics(predicted, truth), "gender_failed": failed}


GROUP_COLUMNS = ("group", "population", "age_band")  # people.csv columns that name a group


def person_groups(people_csv: Path, set_name: str | None = None) -> dict[str, str]:
    """person -> group name: [set:]group-or-population:gender[:age band], from people.csv."""
    people = pd.read_csv(people_csv)
    bands: dict[str, str] = {}
    for column in ("age", "age_label"):
        if column in people.columns:
            ages = pd.to_numeric(people[column], errors="coerce")
            bands = {
                str(p): ("45+" if a >= 45 else "<45")
                for p, a in zip(people.person, ages, strict=True)
                if a == a
            }
            break
    out = {}
    for row in people.to_dict("records"):
        parts = [set_name] if set_name else []
        parts += [str(row[c]) for c in ("group", "population") if c in row and isinstance(row[c], str)]
        parts.append(str(row.get("gender", "?")).upper())
        band = bands.get(str(row["person"])) or (
            row.get("age_band") if isinstance(row.get("age_band"), str) else ""
        )
        if band:
            parts.append(band)
        out[str(row["person"])] = ":".join(parts)
    return out


def figures_by_group(
    pairs: pd.DataFrame, similarities, people_csv: Path, points, gender_by_photo: dict, set_name: str | None
) -> list[dict]:
    """core.verification.policy.group_figures on these pairs, with each group's gender accuracy on
    its people's photos. A pair of two groups (e.g. impostors of two genders) counts as "mixed"."""
    from core.verification.policy import group_figures

    group_of = person_groups(people_csv, set_name)
    mixed = f"{set_name}:mixed" if set_name else "mixed"
    names = []
    for row in pairs.itertuples():
        a, b = group_of.get(person_of(row.file_x)), group_of.get(person_of(row.file_y))
        names.append(a if a is not None and a == b else mixed)
    rows = group_figures(similarities, pairs["label"].to_numpy(), names, points)
    gender_of = {
        p: g.split(":")[-2] if g.split(":")[-1] in ("45+", "<45") else g.split(":")[-1]
        for p, g in group_of.items()
    }
    for row in rows:
        photos = [
            (name, predicted)
            for name, predicted in gender_by_photo.items()
            if row["group"] in ("all", group_of.get(person_of(name)))
        ]
        if photos:
            truth = [gender_of[person_of(name)] for name, _ in photos]
            row["gender_accuracy"] = float(np.mean([t == p for t, (_, p) in zip(truth, photos, strict=True)]))
            row["gender_photos"] = len(photos)
    return [r for r in rows if r["group"] != "all"] + [
        {**r, "group": f"{set_name}:all" if set_name else "all"} for r in rows if r["group"] == "all"
    ]


@dataclass
class PairSet:
    """One set of pairs: the pairs file, the photos' folder, and people.csv (None: no gender
    figures and no groups)."""

    pairs: Path
    images: Path
    people: Path | None = None


@dataclass
class SetsReport:
    report: dict  # the figures (one set's, or {"sets": {...}, "model_version": ...}), for the JSON
    summary: str  # the table by group and the cohort's cost, printed after the figures ("" if none)


def run_sets(
    sets: dict[str | None, PairSet],
    reliability_base: Path,
    *,
    model: str | None = None,
    baseline_pairs: int = 200,
    limit: int | None = None,
    sample: int | None = None,
    unseen_only: bool = False,
    gender_sample: int | None = None,
) -> SetsReport:
    """run() on each set with one engine. Name None is the one unnamed set (its figures are the
    report itself); named sets are reported under "sets". Each set's reliability plot goes beside
    reliability_base (base.<name>.reliability.png); the groups of every set form one table."""
    from core.verification.engine import Engine
    from core.verification.policy import group_table

    engine = Engine.load(model)
    reports = {}
    for name, one in sets.items():
        png = reliability_base.with_suffix(f".{name}.reliability.png" if name else ".reliability.png")
        reports[name] = run(
            one.pairs,
            one.images,
            one.people if one.people and Path(one.people).exists() else None,
            model,
            baseline_pairs,
            limit,
            sample,
            reliability_png=png,
            engine=engine,
            set_name=name,
            unseen_only=unseen_only,
            gender_sample=gender_sample,
        )
    if list(reports) == [None]:
        report = reports[None]
    else:
        report = {
            "sets": {k or "pairs": v for k, v in reports.items()},
            "model_version": engine.model_version,
        }
    groups = [row for r in reports.values() for row in r.get("by_group", [])]
    lines = []
    if groups:
        report["by_group"] = groups
        report["by_group_table"] = group_table(groups).splitlines()
        points = engine.model.operating_points
        lines.append(
            group_table(
                groups,
                f"{engine.model_version}: figures by group (approve_at {points.approve_at:.4f}, "
                f"reject_below {points.reject_below:.4f})",
            )
        )
        for name, r in reports.items():
            if r.get("cohort_ms_per_pair") is not None:
                lines.append(
                    f"{name or 'pairs'}: cohort normalisation {r['cohort_ms_per_pair']:.2f} ms a pair "
                    f"({r['cohort_faces']} cohort faces), latency p95 {r['latency_p95_ms']:.1f} ms"
                )
    return SetsReport(report, "\n".join(lines))
