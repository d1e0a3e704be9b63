"""The capture check's models, trained on the training people of a built capture set.

    faceverify train capture-check [--set data/runtime/capture_set.npz] [--extra ...]
        -> models/pretrained/capture_check.json + capture_occlusion.keras

The set is built by `faceverify bench capture build` (core.benchmarks.capture), which also
reports the figures on the held-out people.

fit: on training people only, in 4 folds by person. The occlusion network (a small Keras CNN:
mask, hand, sunglasses, closed eyes) is trained on three folds and shipped; its limits are read on
its scores of the fourth (people it never saw). The blur model (a logistic on multi-scale gradient
measures) gets its limit from out-of-fold scores of all four and is refitted on everyone. Each
limit lets through at most a share of the allowed false alarms of unmodified photos (the
strictest of 1/2, 1/3, 1/4 whose detection, estimated fold by fold on people the limit was not
read on, keeps 2 points over the target), and sits in the middle of the gap when the problems
stand further apart. Whether the network's answer is averaged over the chip and its mirror image
is chosen the same way.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from core.verification import capture

SEED = 17

# Which synthetic problem each finding is meant to catch, and its allowed false-alarm rate on
# unmodified photos (the product's targets). Limits are chosen at half of it on training people.
TARGETS = {
    "lower_face_covered": (("mask", "hand"), 0.01, 0.95),
    capture.EYES_COVERED: (("sunglasses",), 0.02, 0.90),
    capture.EYES_CLOSED: (("eyes_closed",), 0.02, 0.90),
    capture.BLURRY: (("blur",), 0.02, 0.90),
    capture.TOO_DARK: (("dark",), 0.02, 0.90),
    capture.TOO_BRIGHT: (("bright",), 0.005, None),
    capture.BACKLIT: (("backlit",), 0.005, None),
    capture.FACE_TOO_SMALL: (("small",), 0.02, 0.90),
    capture.FACE_CUT_OFF: (("cut_off",), 0.005, None),
    capture.HEAD_TURNED: ((), 0.01, None),
}
FINDING_OF = {capture.FACE_MASK: "lower_face_covered", capture.HAND_OVER_FACE: "lower_face_covered"}


class CaptureSet:
    """The built set, with masks for the splits and kinds."""

    def __init__(self, path: Path):
        z = np.load(path, allow_pickle=True)
        meta = z["meta"]
        self.person, self.split, self.file, self.kind = (meta[:, i].astype(str) for i in range(4))
        self.detected = meta[:, 4].astype(int) == 1
        self.keys = [str(k) for k in z["keys"]]
        self.measures = z["measures"]
        self.chips = z["chips"]
        self.model = str(z["model"])
        if "face_highlight" not in self.keys:  # a set built before the chip's measures existed
            self._add_chip_measures()

    def _add_chip_measures(self) -> None:
        width = self.column("face_width_px")
        extra = [
            capture.chip_measures(chip, w) if ok else None
            for chip, w, ok in zip(self.chips, width, self.detected, strict=True)
        ]
        names = sorted(next(e for e in extra if e is not None))
        columns = np.array([[e[k] for k in names] if e else [np.nan] * len(names) for e in extra])
        keep = [i for i, k in enumerate(self.keys) if k not in names]
        self.measures = np.concatenate([self.measures[:, keep], columns], axis=1)
        self.keys = [self.keys[i] for i in keep] + names

    def extend(self, other: CaptureSet) -> None:
        """Append another built set's rows (the extra training photos)."""
        order = [other.keys.index(k) for k in self.keys]
        for name in ("person", "split", "file", "kind", "detected", "chips"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))
        self.measures = np.concatenate([self.measures, other.measures[:, order]])

    def column(self, key: str) -> np.ndarray:
        return self.measures[:, self.keys.index(key)]

    def measures_of(self, i: int) -> dict[str, float]:
        return dict(zip(self.keys, self.measures[i].tolist(), strict=True))


def _limit_above(values: np.ndarray, false_alarms: float, share: float = 0.5) -> float:
    """The value at most `share` (half) of the allowed false alarms of unmodified photos exceed."""
    return float(np.quantile(values[np.isfinite(values)], 1.0 - false_alarms * share))


def choose_limit(
    clean: np.ndarray,
    problems: np.ndarray,
    false_alarms: float,
    goal: float | None,
    log_odds: bool = False,
    share: float = 0.5,
) -> float:
    """A limit for a finding raised above it, from training people's photos only.

    At most `share` (half) of the allowed false alarms of the unmodified photos cross it. When the synthetic
    problems stand further apart than that (`goal` of them lie above a higher value), the limit
    goes to the middle of the gap between the two (in log-odds for a probability, whose top end
    is crowded), so that ordinary photos are stopped less often and new people's problems, which
    spread wider than the training people's, are still caught.
    """
    limit = _limit_above(clean, false_alarms, share)
    problems = problems[np.isfinite(problems)]
    if goal is None or not len(problems):
        return limit
    caught = float(np.quantile(problems, 1.0 - goal))
    if caught <= limit:
        return limit
    if not log_odds:
        return (limit + caught) / 2
    low, high = (float(np.clip(v, 1e-6, 1 - 1e-6)) for v in (limit, caught))
    middle = (math.log(low / (1 - low)) + math.log(high / (1 - high))) / 2
    return 1.0 / (1.0 + math.exp(-middle))


# Detection the limits aim for on training people: the target plus a margin for new people.
GOAL_MARGIN = 0.04
GOAL_WITHOUT_TARGET = 0.90


def _goal(finding: str) -> float:
    target = TARGETS[finding][2]
    return min(0.99, (target if target is not None else GOAL_WITHOUT_TARGET) + GOAL_MARGIN)


def build_occlusion_network(seed: int):
    """The occlusion network: a face branch (the whole chip at 64 px, for masks, hands and
    sunglasses) and an eyes branch (the eyes' band at the chip's full resolution, for lids),
    four sigmoid outputs (capture.OCCLUSION_CLASSES)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    face = keras.Input((capture.FACE_INPUT, capture.FACE_INPUT, 3), name="face")
    eyes = keras.Input(capture.EYE_INPUT, name="eyes")

    def convs(x, widths):
        for width in widths:
            x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
            x = layers.MaxPooling2D()(x)
        return x

    f = layers.Flatten()(convs(face, (16, 24, 32, 32)))  # 4 x 4 x 32: where on the face matters
    e = layers.GlobalAveragePooling2D()(convs(eyes, (16, 32, 32)))
    x = layers.Dropout(0.3)(layers.Concatenate()([f, e]))
    x = layers.Dense(32, activation="relu")(x)
    out = layers.Dense(len(capture.OCCLUSION_CLASSES), activation="sigmoid", name="occlusion")(x)
    return keras.Model([face, eyes], out, name="capture_occlusion")


def train_occlusion_network(face, eyes, labels, epochs: int, seed: int):
    """Trained on the photos and their mirror images (a mask or a hand is no different mirrored)."""
    import keras

    model = build_occlusion_network(seed)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="binary_crossentropy")
    face = np.concatenate([face, face[:, :, ::-1]])
    eyes = np.concatenate([eyes, eyes[:, :, ::-1]])
    labels = np.concatenate([labels, labels])
    model.fit([face, eyes], labels, epochs=epochs, batch_size=64, shuffle=True, verbose=2)
    return model


def save_without_optimizer(model, path: Path) -> None:
    """The weights in an uncompiled copy: the optimizer's state would triple the file."""
    shipped = build_occlusion_network(SEED)
    shipped.set_weights(model.get_weights())
    shipped.save(path)


def _predict(model, face, eyes) -> np.ndarray:
    return np.asarray(model.predict([face, eyes], batch_size=256, verbose=0), np.float64)


def _occlusion_scores(p: np.ndarray) -> dict[str, np.ndarray]:
    mask, hand, sunglasses, closed = p.T
    return {
        "lower_face_covered": 1.0 - (1.0 - mask) * (1.0 - hand),
        capture.EYES_COVERED: sunglasses,
        capture.EYES_CLOSED: closed,
    }


def _blur_labels(kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows the blur model learns from and their labels. A face shrunk (or cut off) is not what
    blur means here: it has its own finding, and an enlarged small face is soft whatever it is."""
    rows = ~np.isin(kinds, ("small", "cut_off"))
    return rows, kinds == "blur"


def _fit_blur(x: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=1.0, max_iter=2000).fit((x - mean) / scale, y)
    return {
        "features": list(capture.BLUR_FEATURES),
        "mean": [round(float(v), 6) for v in mean],
        "scale": [round(float(v), 6) for v in scale],
        "weights": [round(float(v), 6) for v in model.coef_[0]],
        "bias": round(float(model.intercept_[0]), 6),
    }


def blur_matrix(data: CaptureSet, rows: np.ndarray) -> np.ndarray:
    return np.stack([data.column(f"blur_{name}")[rows] for name in capture.BLUR_FEATURES], axis=1)


FOLDS = 4  # folds by person of the training people: every limit is read on out-of-fold scores
# False-alarm levels tried for the network's and the blur model's limits, as shares of the allowed
# rate: the strictest whose detection, estimated on training people the limit was not read on,
# keeps KEEP_MARGIN over the target (new people spread wider than the training people did).
SHARES = (0.5, 1 / 3, 0.25)
KEEP_MARGIN = 0.02
NETWORK_FINDINGS = ("lower_face_covered", capture.EYES_COVERED, capture.EYES_CLOSED)


def _folds_by_person(people: np.ndarray, calibration_share: float) -> np.ndarray:
    """Fold of each row, by person. Fold 0 is the same seeded draw of people the previous network's
    limits were chosen on, so the network trained without them can be compared with that one on
    the same people; the other people make FOLDS - 1 folds."""
    from sklearn.model_selection import GroupKFold, GroupShuffleSplit

    split = GroupShuffleSplit(n_splits=1, test_size=calibration_share, random_state=SEED)
    learn, _ = next(split.split(people, groups=people))
    fold = np.zeros(len(people), int)
    for k, (_, val) in enumerate(GroupKFold(FOLDS - 1).split(learn, groups=people[learn]), start=1):
        fold[learn[val]] = k
    return fold


def _nested(score, kinds, fold, finding: str, share: float) -> dict:
    """What the limit rule gives on people it was not read on: for each fold, the limit from the
    other folds' scores, its detection and false alarms on this fold's (training) people."""
    target_kinds, allowed, _ = TARGETS[finding]
    clean, positive = kinds == "clean", np.isin(kinds, target_kinds)
    alarms = hits = 0
    worst = 0.0
    for k in np.unique(fold):
        out, mine = fold != k, fold == k
        lim = choose_limit(
            score[clean & out], score[positive & out], allowed, _goal(finding), log_odds=True, share=share
        )
        fired = score[clean & mine] > lim
        alarms += int(fired.sum())
        hits += int((score[positive & mine] > lim).sum())
        worst = max(worst, float(fired.mean()))
    return {
        "share": round(share, 4),
        "detected": round(hits / max(1, int(positive.sum())), 4),
        "false_alarms": round(alarms / max(1, int(clean.sum())), 4),
        "false_alarms_worst_fold": round(worst, 4),
    }


def _strictest(score, kinds, fold, finding: str) -> dict:
    """The strictest share whose out-of-fold detection keeps the margin (else the loosest)."""
    target = TARGETS[finding][2]
    tried = [_nested(score, kinds, fold, finding, s) for s in SHARES]
    kept = [t for t in tried if t["detected"] >= target + KEEP_MARGIN]
    return (min(kept, key=lambda t: t["share"]) if kept else tried[0]) | {"tried": tried}


def _cost(chosen: dict[str, dict]) -> float:
    """Out-of-fold false alarms over the allowed rate, summed; a missed detection target costs more."""
    total = 0.0
    for finding, c in chosen.items():
        _, allowed, target = TARGETS[finding]
        total += c["false_alarms"] / allowed + (10.0 if c["detected"] < target else 0.0)
    return total


def fit(
    set_path: Path,
    epochs: int,
    calibration_share: float = 0.25,
    extra_path: Path | None = None,
    keep_network: bool = False,
) -> dict:
    """The occlusion network and the blur model, on training people only, and every limit from
    scores of training people that the model scoring them never saw.

    The training people are split into FOLDS folds by person (fold 0: calibration_share of them).
    The network is trained on folds 1..FOLDS-1 and shipped; its limits are read on its scores of
    fold 0. The blur model (a logistic) gets out-of-fold scores on all folds and is refitted on
    everyone. Each limit sits at the strictest false-alarm level (SHARES) whose detection,
    estimated sub-fold by sub-fold on people the limit was not read on, keeps KEEP_MARGIN over the
    target; whether the network's answer is averaged with its mirror image's is chosen the same
    way (fewer estimated false alarms, then more found). No held-out person enters.
    """
    from sklearn.model_selection import GroupKFold

    data = CaptureSet(set_path)
    main_rows = np.ones(len(data.kind), bool)
    if extra_path is not None and extra_path.exists():
        extra = CaptureSet(extra_path)
        if extra.model != data.model or set(extra.split) != {"train"}:
            raise SystemExit(
                f"{extra_path} must hold training people's photos of model {data.model}'s split "
                f"(it holds model {extra.model}, splits {sorted(set(extra.split))})"
            )
        main_rows = np.concatenate([main_rows, np.zeros(len(extra.kind), bool)])
        data.extend(extra)
    train_rows = np.where((data.split == "train") & data.detected)[0]
    kinds, people = data.kind[train_rows], data.person[train_rows]
    labels = np.stack([kinds == c for c in capture.OCCLUSION_CLASSES], axis=1).astype(np.float32)
    face, eyes = capture.occlusion_inputs(data.chips[train_rows])
    fold = _folds_by_person(people, calibration_share)
    print(
        f"occlusion network: {len(train_rows)} variants of {len(set(people))} training people "
        f"({int(main_rows[train_rows].sum())} of the main set), {FOLDS} folds by person",
        flush=True,
    )
    # The network: one copy trained on folds 1-3 is shipped, and its limits are read on its own
    # scores of fold 0's people, which it never saw. (Copies trained on different folds put the
    # same photos at very different scores: on this set the 99th percentile of unmodified photos'
    # closed-eyes score was 0.02 for one copy and 1.00 for another, so limits read on several
    # copies' pooled out-of-fold scores do not fit any one network; measured with 4 copies, the
    # fold-by-fold estimate was 77% closed eyes detected at 6.8% false alarms.)
    zero = fold == 0
    previous = None
    if capture.OCCLUSION_FILE.exists():  # the network being replaced (or kept), for the record
        import keras

        old = keras.saving.load_model(capture.OCCLUSION_FILE, compile=False)
        previous = _predict(old, face[zero], eyes[zero])
    if keep_network:  # the shipped network was trained by this command on folds 1-3: rescore only
        model = old
    else:
        start = time.perf_counter()
        model = train_occlusion_network(face[~zero], eyes[~zero], labels[~zero], epochs, SEED)
        print(f"  network trained on folds 1-{FOLDS - 1} in {time.perf_counter() - start:.0f} s", flush=True)
        save_without_optimizer(model, capture.OCCLUSION_FILE)
        capture._occlusion_graph.cache_clear()
    plain = _predict(model, face[zero], eyes[zero])
    mirror = (plain + _predict(model, face[zero][:, :, ::-1], eyes[zero][:, :, ::-1])) / 2
    kinds0 = kinds[zero]
    sub = np.zeros(int(zero.sum()), int)  # fold 0's people in FOLDS sub-folds, for the estimates
    for k, (_, val) in enumerate(GroupKFold(FOLDS).split(sub, groups=people[zero])):
        sub[val] = k
    views = {}
    for name, p in (("one view", plain), ("mirror average", mirror)):
        scores = _occlusion_scores(p)
        views[name] = {f: _strictest(scores[f], kinds0, sub, f) for f in NETWORK_FINDINGS}
    # fewer estimated false alarms; on a tie (counts of a few hundred photos often are), more found
    view = min(views, key=lambda v: (_cost(views[v]), -sum(c["detected"] for c in views[v].values())))
    network_scores = _occlusion_scores(mirror if view == "mirror average" else plain)
    comparison = {}
    if keep_network:  # the kept network is the new one: keep the record's comparison
        comparison = capture.check_record()["chosen_on"].get("previous_network_same_people", {})
    elif previous is not None:  # the previous network and the new one, on the same people
        for finding in NETWORK_FINDINGS:
            comparison[finding] = {
                name: _detected_at(_occlusion_scores(p)[finding], kinds0, finding)
                for name, p in (
                    ("previous network", previous),
                    ("new, one view", plain),
                    ("new, mirror", mirror),
                )
            }

    blur_x = blur_matrix(data, train_rows)
    blur_rows, blur_y = _blur_labels(kinds)
    blur_oof = np.zeros(len(train_rows))
    for k in range(FOLDS):
        fit_idx = np.where((fold != k) & blur_rows)[0]
        blur_fold = _fit_blur(blur_x[fit_idx], blur_y[fit_idx])
        blur_oof[fold == k] = [capture.blur_probability(v, blur_fold) for v in blur_x[fold == k]]
    blur = _fit_blur(blur_x[blur_rows], blur_y[blur_rows])

    chosen = dict(views[view])
    chosen[capture.BLURRY] = _strictest(blur_oof, kinds, fold, capture.BLURRY)
    limits = {}
    for finding, score, mine in [
        *((f, v, kinds0) for f, v in network_scores.items()),
        (capture.BLURRY, blur_oof, kinds),
    ]:
        target_kinds, allowed, _ = TARGETS[finding]
        limits[finding] = choose_limit(
            score[mine == "clean"],
            score[np.isin(mine, target_kinds)],
            allowed,
            _goal(finding),
            log_odds=True,
            share=chosen[finding]["share"],
        )
    # The measured limits are read on the main set's training photos only, as before: the extra
    # photos have no dark, bright, backlit or cut-off variants.
    main = main_rows[train_rows]
    clean = (kinds == "clean") & main

    def measured(finding: str, values: np.ndarray, below: bool = False) -> float:
        """choose_limit on a measure of the training people's photos (negated for 'below')."""
        sign = -1.0 if below else 1.0
        target_kinds, allowed, _ = TARGETS[finding]
        v = sign * values[train_rows]
        return sign * choose_limit(v[clean], v[np.isin(kinds, target_kinds) & main], allowed, _goal(finding))

    limits[capture.TOO_DARK] = measured(capture.TOO_DARK, data.column(DARK_MEASURE), below=True)
    limits[capture.TOO_BRIGHT] = max(0.01, measured(capture.TOO_BRIGHT, data.column("face_clipped")))
    limits[capture.BACKLIT] = measured(capture.BACKLIT, backlight(data))
    limits[capture.FACE_CUT_OFF] = max(0.02, measured(capture.FACE_CUT_OFF, data.column("face_outside")))
    # Pose cannot be drawn. The networks' figures were measured on LFW photos like the training
    # people's, so they are known to cope up to the widest turn those photos show: that is the limit.
    train_clean = (data.split == "train") & data.detected & (data.kind == "clean") & main_rows
    limits["yaw"] = float(np.nanmax(np.abs(data.column("yaw")[train_clean])))
    limits["pitch"] = float(np.nanmax(np.abs(data.column("pitch")[train_clean])))
    limits = {k: round(float(v), 4) for k, v in limits.items()}
    record = {
        "limits": limits,
        "blur_model": blur,
        "made_by": "faceverify train capture-check",
        "chosen_on": {
            "set": [set_path.name]
            + ([extra_path.name] if extra_path is not None and extra_path.exists() else []),
            "model_split": data.model,
            "training_people": len(set(people)),
            "unmodified_training_photos": int((kinds == "clean").sum()),
            "limits_from": (
                f"the network's: its scores of the {len(set(people[zero]))} training people it was not trained on "
                f"(fold 0; share and view chosen on {FOLDS} sub-folds of them by person); the blur model's: "
                f"out-of-fold scores of every training person, {FOLDS} folds by person"
            ),
            "rule": (
                "the network's and the blur model's limits: at most a share (0.5, 1/3 or 0.25: the strictest "
                f"whose out-of-fold detection keeps the target + {KEEP_MARGIN:.0%}) of the allowed false "
                "alarms of unmodified training photos (1% lower face, 2% others); where the training problems "
                f"stand further apart (the target + {GOAL_MARGIN:.0%} of them above a higher value), the middle "
                "of that gap (in log-odds). The measured limits: half the allowed false alarms (0.5% without "
                "a target), the same gap rule, on the main set's training photos"
            ),
            "out_of_fold_estimate": chosen,
            "views_tried": {
                v: {f: {k: c[k] for k in ("share", "detected", "false_alarms")} for f, c in views[v].items()}
                for v in views
            },
            "previous_network_same_people": comparison,
        },
        "occlusion_network": {
            "file": capture.OCCLUSION_FILE.name,
            "outputs": list(capture.OCCLUSION_CLASSES),
            "input": (
                f"the aligned 150 px chip: whole at {capture.FACE_INPUT} px RGB and the eyes' band "
                "(rows 28-63, columns 19-130) in grey at full resolution, each standardised"
            ),
            "mirror_average": view == "mirror average",
            "parameters": int(model.count_params()),
            "epochs": epochs,
            "trained_on_people": len(set(people[~zero])),
            "trained_on": "synthetic variants of the training people's photos and their mirror images",
        },
        "synthetic": True,
    }
    capture.LIMITS_FILE.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    capture.check_record.cache_clear()
    print(json.dumps(record["chosen_on"], indent=1))
    print(json.dumps(limits, indent=1))
    return record


def _detected_at(score, kinds, finding: str) -> dict:
    """Detection at the score half the allowed false alarms of these unmodified photos exceed."""
    target_kinds, allowed, _ = TARGETS[finding]
    lim = _limit_above(score[kinds == "clean"], allowed)
    return {
        "limit": round(lim, 4),
        "detected": round(float((score[np.isin(kinds, target_kinds)] > lim).mean()), 4),
        "clean_photos": int((kinds == "clean").sum()),
    }


DARK_MEASURE = capture.DARK_MEASURE


def backlight(data: CaptureSet) -> np.ndarray:
    return data.column("background_luminance") - data.column("face_luminance")
