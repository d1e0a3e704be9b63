"""The gender head's recipe: extra gender-only photos, how each photo weighs, the flag threshold.

A gender-only set is a CSV of file,gender (and optional columns such as age) beside a folder of
face photos with no identities: each photo counts as its own person, trains and judges the gender
head only, and never enters the Siamese tower's pairs (a lone photo is nobody's impostor on purpose).

Weights: every person weighs alike within its cell (source x gender), and every cell weighs alike,
so a few people with hundreds of photos, the majority gender, and the larger source do not decide
the head alone (East Asian members are a source of their own, not 7 people among LFW's 118).

The gender_mismatch flag: the engine flags a mismatch only at a confidence of at least the
version's gender_min_confidence (below it: "gender cannot be confirmed", to review). That value is
chosen on out-of-fold predictions for the training people (folds by person): the lowest confidence
at which the false flags on men and on women of every source, and of its people 45 or older where
ages are known, stay at most gender_max_false_flags, never below MIN_CONFIDENCE_FLOOR.

    read_gender_only(csv, images) -> DataFrame(path, person, gender)
    photo_weights(people, genders, groups) -> weights    (core.training.fitting)
    out_of_fold_probabilities(inputs, genders, people, groups, params) -> P(M) per photo
    choose_min_confidence(p_male, genders, groups, max_false_flags) -> (confidence, per cell)
    with_older_band(sources, age_bands) -> groups    "<source>:45+" for the older photos
    gender_figures(p_male, genders, groups, min_confidence) -> figures per group and gender
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.training.fitting import photo_weights
from core.verification.genders import normalise_gender

GENDER_ONLY = "gender_only"  # the source name of photos from a gender-only set
GENDER_ONLY_PREFIX = "gender-only:"  # person name of each such photo: the prefix, then its file
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# The shipped versions flagged a mismatch from 0.9; the chosen value never goes below it, so a
# new version never flags more readily than they did.
MIN_CONFIDENCE_FLOOR = 0.9
MIN_CONFIDENCE_CEILING = 0.999
CONFIDENCE_FOLDS = 5


def default_images_folder(csv_path: Path) -> Path:
    """The photos of a gender-only CSV: the folder named like the CSV beside it (gender_only.csv ->
    gender_only/), else the CSV's own folder."""
    csv_path = Path(csv_path)
    named = csv_path.with_suffix("")
    return named if named.is_dir() else csv_path.parent


def read_gender_only(csv_path: Path, images: Path | None = None) -> pd.DataFrame:
    """Rows (path, person, gender, then the CSV's other columns, such as age) of a gender-only set;
    raises ValueError naming every problem.

    The CSV needs the columns file and gender (M/F or any form normalise_gender reads); each
    file is looked up in images (default_images_folder). Every photo is its own person.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"The gender-only file {csv_path} does not exist.")
    folder = Path(images) if images else default_images_folder(csv_path)
    if not folder.is_dir():
        raise ValueError(f"The gender-only photo folder {folder} does not exist.")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{csv_path}: not a readable CSV ({exc})") from None
    missing = {"file", "gender"} - set(table.columns)
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))} (needs file,gender)")
    extra = [c for c in table.columns if c not in ("file", "gender", "path", "person")]
    problems, rows = [], []
    others = (table[c] for c in extra)
    for line, (name, gender, *more) in enumerate(
        zip(table.file, table.gender, *others, strict=True), start=2
    ):
        path = folder / name.strip()
        try:
            gender = normalise_gender(gender)
        except ValueError as exc:
            problems.append(f"line {line}: {exc}")
            continue
        if Path(name).name != name.strip() or path.suffix.lower() not in PHOTO_SUFFIXES:
            problems.append(f"line {line}: {name!r} is not a photo file name in {folder}")
        elif not path.is_file():
            problems.append(f"line {line}: {path} does not exist")
        else:
            rows.append((path, GENDER_ONLY_PREFIX + path.name, gender, *more))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"{csv_path}: {shown}")
    if not rows:
        raise ValueError(f"{csv_path}: no photos listed")
    return pd.DataFrame(rows, columns=["path", "person", "gender", *extra])


def out_of_fold_probabilities(inputs, genders, people, groups, params, folds: int = CONFIDENCE_FOLDS):
    """P(male) of every training photo from a head trained without its person (folds by person),
    or None when there are too few people of each gender to fold."""
    from core.training.fitting import train_gender
    from core.verification.heads import GENDERS

    people, genders, groups = np.asarray(people), np.asarray(genders), np.asarray(groups)
    unique = np.unique(people)
    per_gender = [len(np.unique(people[genders == g])) for g in GENDERS]
    folds = min(folds, min(per_gender) // 2)
    if folds < 2:
        return None
    rng = np.random.default_rng(params.seed + 5)
    fold_of = dict(zip(rng.permutation(unique), np.arange(len(unique)) % folds, strict=True))
    fold = np.array([fold_of[p] for p in people])
    p_male = np.full(len(people), np.nan)
    for k in range(folds):
        inside = fold == k
        if len(set(genders[~inside])) < 2:
            return None
        model = train_gender(
            inputs[~inside], genders[~inside], people[~inside], params, groups=groups[~inside]
        )
        p_male[inside] = model.predict(inputs[inside], verbose=0)[:, GENDERS.index("M")]
    return p_male


def _log_odds(p_male) -> np.ndarray:
    p = np.clip(np.asarray(p_male, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def apply_calibration(p_male, slope: float, intercept: float) -> np.ndarray:
    """P(male) after calibration: sigmoid(slope * log-odds + intercept)."""
    return 1.0 / (1.0 + np.exp(-(slope * _log_odds(p_male) + intercept)))


def calibrate_head(model, p_oof, genders, people) -> tuple[float, float]:
    """Fit sigmoid(slope * log-odds) to the out-of-fold predictions (each person and gender alike)
    and fold the slope into the head's last layer, so that its confidence means what it says: the
    L2 that keeps the head from overfitting also pulls its probabilities toward 0.5 (with the
    shipped head, 47% of East Asian men came out below 0.9). A slope alone leaves every decision
    as trained. Returns (slope, intercept 0.0)."""
    from sklearn.linear_model import LogisticRegression

    genders = np.asarray(genders)
    fit = LogisticRegression(C=100.0, fit_intercept=False).fit(
        _log_odds(p_oof).reshape(-1, 1), genders == "M", sample_weight=photo_weights(people, genders)
    )
    slope = float(fit.coef_[0, 0])
    # The two-way softmax's log-odds (male minus female) is the difference of the last layer's
    # columns: scaling the layer scales it.
    layer = model.get_layer("gender")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * slope, bias * slope])
    return slope, 0.0


def false_flags(p_male, genders, min_confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Per photo: would the engine flag a mismatch against the true gender (wrong side, confident),
    and would it say the gender cannot be confirmed (below min_confidence)."""
    p_male, genders = np.asarray(p_male, float), np.asarray(genders)
    confidence = np.maximum(p_male, 1 - p_male)
    predicted = np.where(p_male >= 0.5, "M", "F")
    return (predicted != genders) & (confidence >= min_confidence), confidence < min_confidence


def choose_min_confidence(p_male, genders, groups, max_false_flags: float) -> tuple[float, dict]:
    """The lowest confidence in [MIN_CONFIDENCE_FLOOR, MIN_CONFIDENCE_CEILING] at which the false
    mismatch flags of each group's men and women are each at most max_false_flags (the ceiling
    when none is); and the false-flag rate of each cell there."""
    p_male, genders, groups = np.asarray(p_male, float), np.asarray(genders), np.asarray(groups)
    candidates = np.round(np.arange(MIN_CONFIDENCE_FLOOR, MIN_CONFIDENCE_CEILING + 1e-9, 0.001), 3)
    cells = [(g, s) for g in np.unique(groups) for s in ("M", "F") if np.any((groups == g) & (genders == s))]
    chosen = float(candidates[-1])
    for candidate in candidates:
        flagged, _ = false_flags(p_male, genders, candidate)
        if all(flagged[(groups == g) & (genders == s)].mean() <= max_false_flags for g, s in cells):
            chosen = float(candidate)
            break
    flagged, _ = false_flags(p_male, genders, chosen)
    rates = {f"{g}/{s}": float(flagged[(groups == g) & (genders == s)].mean()) for g, s in cells}
    return chosen, rates


def gender_figures(p_male, genders, groups, min_confidence: float) -> dict:
    """Per group (and all together): photos, men called women, women called men, accuracy,
    balanced accuracy, and at min_confidence the false gender_mismatch flags and the photos whose
    gender cannot be confirmed, for men and women each."""
    p_male, genders, groups = np.asarray(p_male, float), np.asarray(genders), np.asarray(groups)
    predicted = np.where(p_male >= 0.5, "M", "F")
    flagged, unsure = false_flags(p_male, genders, min_confidence)
    out = {}
    for group in [*sorted(set(groups)), "all"]:
        mask = np.ones(len(groups), bool) if group == "all" else groups == group
        men, women = mask & (genders == "M"), mask & (genders == "F")
        row = {"n_men": int(men.sum()), "n_women": int(women.sum())}
        rate = lambda values, m: float(values[m].mean()) if m.any() else None  # noqa: E731
        row["men_called_women"] = rate(predicted == "F", men)
        row["women_called_men"] = rate(predicted == "M", women)
        row["accuracy"] = rate(predicted == genders, mask)
        errors = [e for e in (row["men_called_women"], row["women_called_men"]) if e is not None]
        row["balanced_accuracy"] = 1 - float(np.mean(errors)) if errors else None
        row["false_mismatch_flags_men"] = rate(flagged, men)
        row["false_mismatch_flags_women"] = rate(flagged, women)
        row["unconfirmed_men"] = rate(unsure, men)
        row["unconfirmed_women"] = rate(unsure, women)
        out[group] = row
    return out


def identity_rows(data):
    """The FeatureSet without its gender-only photos (they train and judge the gender head only).

    collect() puts them after every other photo, so row numbers (augmented views' rows, reviewed
    pairs, evaluation pairs) mean the same in both sets.
    """
    from dataclasses import replace

    sources = data.sources if data.sources is not None else np.full(len(data.people), "")
    only = sources == GENDER_ONLY
    if not only.any():
        return data
    keep = int(np.argmax(only))
    if only[keep:].sum() != len(only) - keep:
        raise ValueError("gender-only photos must come after every other photo")
    views = data.aug_of < keep
    return replace(
        data,
        names=data.names[:keep],
        people=data.people[:keep],
        genders=data.genders[:keep],
        embeddings=data.embeddings[:keep],
        gender_logits=data.gender_logits[:keep],
        shas=None if data.shas is None else data.shas[:keep],
        sources=sources[:keep],
        refs=None if data.refs is None else data.refs[:keep],
        aug_of=data.aug_of[views],
        aug_embeddings=data.aug_embeddings[views],
        aug_logits=data.aug_logits[views],
        others={name: rows[:keep] for name, rows in data.others.items()},
        age_bands=None if data.age_bands is None else data.age_bands[:keep],
    )


def with_older_band(sources, age_bands) -> np.ndarray:
    """Each photo's source, as "<source>:45+" for photos of people 45 or older (where known: the
    age band is "45+" for them and "" for everyone else, core.training.data)."""
    sources = np.asarray(sources).astype(str)
    if age_bands is None:
        return sources
    bands = np.asarray(age_bands).astype(str)
    return np.where(bands != "", np.char.add(np.char.add(sources, ":"), bands), sources)


def fit_gender_head(data, train, held, params, progress=None) -> dict:
    """Train the gender head on the training people's labelled photos (and their augmented views),
    choose its mismatch confidence on out-of-fold predictions for them, judge it on the held-out
    people. Returns {"model", "min_confidence", "chosen_on", "training_false_flags", "metrics",
    "gender_rows"}. data: every photo, gender-only ones included; train/held: masks over them.
    """
    from core.training.fitting import gender_metrics, train_gender
    from core.verification.features import head_inputs
    from core.verification.heads import GENDERS

    networks = params.network_names()
    sources = data.sources if data.sources is not None else np.full(len(data.people), "")
    # Each source, and apart from it its people 45 or older where ages are known.
    cells = with_older_band(sources, data.age_bands)
    _, inputs = head_inputs(data.inputs(networks), data.gender_logits)
    labelled = data.genders != ""
    rows = np.flatnonzero(train & labelled)
    # Augmented views (dlib's only: TrainParams refuses them with other networks) join their photos.
    views = np.flatnonzero(train[data.aug_of] & labelled[data.aug_of]) if len(data.aug_of) else data.aug_of
    of = data.aug_of[views]
    x, genders, people, groups = inputs[rows], data.genders[rows], data.people[rows], sources[rows]
    if len(views):
        _, view_inputs = head_inputs(data.aug_embeddings[views], data.aug_logits[views])
        x = np.concatenate([x, view_inputs])
        genders, people = (
            np.concatenate([genders, data.genders[of]]),
            np.concatenate([people, data.people[of]]),
        )
        groups = np.concatenate([groups, sources[of]])
    model = train_gender(x, genders, people, params, progress=progress, groups=groups)
    p_oof = out_of_fold_probabilities(
        inputs[rows], data.genders[rows], data.people[rows], sources[rows], params
    )
    calibration = None
    if p_oof is None:
        min_confidence, training_flags = MIN_CONFIDENCE_FLOOR, {}
        chosen_on = "too few training people to fold: the floor"
    else:
        calibration = calibrate_head(model, p_oof, data.genders[rows], people=data.people[rows])
        p_oof = apply_calibration(p_oof, *calibration)
        # Each cell and gender on its own: the older band (the service's members) is where the
        # head errs most, so it must meet the false-flag limit too.
        min_confidence, training_flags = choose_min_confidence(
            p_oof, data.genders[rows], cells[rows], params.gender_max_false_flags
        )
        chosen_on = f"out-of-fold predictions for the training people ({CONFIDENCE_FOLDS} folds by person)"
    held_rows = np.flatnonzero(held & labelled)
    p_male = (
        model.predict(inputs[held_rows], verbose=0)[:, GENDERS.index("M")] if len(held_rows) else np.zeros(0)
    )
    predicted = np.where(p_male >= 0.5, "M", "F")
    truth = data.genders[held_rows]
    metrics = gender_metrics(predicted, truth)
    pretrained = np.where(data.gender_logits[held_rows] > 0, "M", "F")
    metrics["pretrained_gender_accuracy"] = gender_metrics(pretrained, truth)["gender_accuracy"]
    metrics["gender_min_confidence"] = min_confidence
    metrics["gender_by_source"] = gender_figures(p_male, truth, sources[held_rows], min_confidence)
    older = cells[held_rows] != sources[held_rows]
    if older.any():  # the service's members are in their 50s and 60s: their figures on their own
        figures = gender_figures(p_male[older], truth[older], cells[held_rows][older], min_confidence)
        metrics["gender_by_source_45_plus"] = {group: row for group, row in figures.items() if group != "all"}
    if calibration is not None:
        metrics["gender_calibration"] = {"slope": calibration[0], "intercept": calibration[1]}
    return {
        "model": model,
        "min_confidence": min_confidence,
        "chosen_on": chosen_on,
        "training_false_flags": training_flags,
        "metrics": metrics,
        "gender_rows": held_rows,
    }
