"""MODEL_CARD.md of a model version: what it is, what it was trained on and under which terms, its
figures group by group on people it never saw, and what it is known not to do well.

    model_card(metadata) -> str                 the card's Markdown
    write_model_card(directory, metadata) -> Path
"""

from __future__ import annotations

from pathlib import Path

from core.verification.policy import group_table

NETWORK_NOTES = {
    "dlib": "dlib's face-recognition ResNet (128-d; dlib reports 99.38% on LFW), ported to Keras. Weights "
    "from face-recognition-models (CC0, trained by dlib's author on about 3 million faces, mostly of "
    "Western public figures). Run compiled with 8-bit weights (embedding within cosine 0.9997 of the "
    "float network's; see docs/architecture.md).",
    "sface": "OpenCV Zoo's SFace (128-d, int8), ported to Keras. Apache-2.0 per OpenCV Zoo; its "
    "training data are not documented (see models/pretrained/NOTICE-sface.md).",
    "sface8": "OpenCV Zoo's SFace (128-d, int8), ported to Keras and run compiled with 8-bit weights "
    "(about 40% faster; features within cosine 0.996 of the float network's, so versions are trained "
    "on them). Apache-2.0 per OpenCV Zoo; its training data are not documented (see "
    "models/pretrained/NOTICE-sface.md).",
}

# What the known development sets are and the terms they come under; matched on the set's folder.
KNOWN_SETS = (  # the first that matches wins: gender_only lies inside eastasian_dev
    (
        "gender_only",
        "UTKFace face chips labelled Asian (adults, each its own person): **non-commercial research only**.",
    ),
    (
        "eastasian_dev",
        "CASIA-FaceV5 (Chinese volunteers, webcam photos on a blue background): "
        "**non-commercial research only**, under a signed agreement with CASIA.",
    ),
    (
        "lfw",
        "Labeled Faces in the Wild (public figures, mostly Western; 7 East Asian people). "
        "Research data set; the people did not consent to face recognition.",
    ),
)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2%}"  # None: no photo of that gender in the group


def _terms_of(path: str) -> str:
    for key, note in KNOWN_SETS:
        if key in str(path):
            return note
    return "Terms not recorded: check them before any use."


def model_card(metadata: dict) -> str:
    version = metadata.get("version", "?")
    data = metadata.get("data", {})
    metrics = metadata.get("metrics", {})
    policy = metadata.get("policy", {})
    cohort = metadata.get("cohort")
    params = metadata.get("params", {})
    lines = [
        f"# Model card: {version}",
        "",
        f"Created {metadata.get('created_at', '?')} by the project's training command "
        "(python -m core train).",
        "",
        "## What it does",
        "Decides whether two face photos show the same person (similarity 0..1, the calibrated "
        "probability of one person at even odds) and gives the gender of the verification photo. "
        f"Automatic approval at similarity >= {policy.get('approve_at', float('nan')):.4f}, automatic "
        f"rejection below {policy.get('reject_below', float('nan')):.4f}, review between.",
        "",
        "## Networks",
    ]
    for name in metadata.get("networks", ["dlib"]):
        lines.append(f"- {NETWORK_NOTES.get(name, name)}")
    lines += [
        "- Cydral's gender CNN (ported to Keras); its log-odds and both identity embeddings, "
        "standardised, feed a logistic gender head trained here.",
        "- A linear Siamese tower on the networks' embeddings side by side (trained here; it starts "
        "at their fused distance and stays close to it).",
    ]
    if cohort:
        sources = ", ".join(f"{k}: {v}" for k, v in cohort.get("faces_by_source", {}).items())
        lines += [
            f"- Cohort score normalisation: each photo is compared with {cohort['faces']} faces of other "
            f"people shipped in {cohort['file']} ({sources}); the pair's distance is expressed against "
            f"each photo's {cohort['top_k']} closest cohort faces (adaptive S-norm) and calibrated to a "
            "probability.",
        ]
    lines += ["", "## Training data and their terms"]
    sources = [s.strip() for s in str(data.get("source", "")).split(" + ") if s.strip()]
    for source in sources:
        lines.append(f"- `{source}`: {_terms_of(source)}")
    lines += [
        f"- {data.get('n_photos', '?')} photos of {data.get('n_people', '?')} people; "
        f"{len(data.get('train_people', []))} people trained on, {len(data.get('heldout_people', []))} "
        "held out (never seen by the heads, the calibration or the operating points).",
        "",
        "**Because of these terms this version is for research and internal evaluation only.** Before "
        "any commercial use, retrain it on data the company may use (for example reviewed decisions "
        "on consenting members' photos), including the cohort.",
        "",
        "## Figures on held-out people",
        f"Pooled held-out pairs: accuracy {metrics.get('verification_accuracy', float('nan')):.4%}, "
        f"ROC AUC {metrics.get('verification_auc') or float('nan'):.5f}, FNMR at FMR 0.1% "
        f"{metrics.get('fnmr_at_fmr_0_001', float('nan')):.2%}, calibration error "
        f"{metrics.get('calibration_error', float('nan')):.2%}, gender accuracy "
        f"{metrics.get('gender_accuracy') or float('nan'):.2%} (balanced "
        f"{metrics.get('gender_balanced_accuracy') or float('nan'):.2%}).",
        "",
    ]
    by_group = metadata.get("metrics_by_group")
    if by_group:
        lines += [
            "By group (population x gender x age band; impostor pairs within the group), at the "
            "version's operating points:",
            "",
            "```",
            group_table(by_group),
            "```",
            "",
        ]
    by_source = metrics.get("gender_by_source") or {}
    if by_source:
        lines += [
            "Gender on held-out people, by set (men called women / women called men; false "
            f"gender_mismatch flags at the version's confidence {metadata.get('gender_min_confidence', '?')}):",
            "",
            "| set | men | women | men called women | women called men | balanced accuracy | false flags men / women |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        older = metrics.get("gender_by_source_45_plus") or {}
        for name, g in [*by_source.items(), *older.items()]:
            lines.append(
                f"| {name} | {g['n_men']} | {g['n_women']} | {_percent(g['men_called_women'])} | "
                f"{_percent(g['women_called_men'])} | {_percent(g['balanced_accuracy'])} | "
                f"{_percent(g['false_mismatch_flags_men'])} / {_percent(g['false_mismatch_flags_women'])} |"
            )
        lines.append("")
    chosen = policy.get("chosen_on", "")
    older_gender = (
        [
            "- Gender is weakest on faces of people 45 and older (the rows marked 45+): the flag's "
            "confidence is chosen so that they too are rarely flagged falsely, which leaves more of "
            "their photos unconfirmed, for a person to check."
        ]
        if metrics.get("gender_by_source_45_plus")
        else []
    )
    lines += [
        "## Operating points",
        f"Chosen on {chosen} for at most {policy.get('max_fmr', 0.001):.1%} impostors approved and "
        f"{policy.get('max_fnmr', 0.001):.1%} genuine pairs rejected.",
        "",
        "## Known limits",
        "- The East Asian development people are young Chinese adults photographed by webcam on a "
        "plain background: an easy set. Korean members in their 50s and 60s, phone photos and "
        "professional portraits are harder; watch the impostor pairs between women most.",
        "- Few East Asian identities (tens of people): group figures carry wide uncertainty; a "
        "group with fewer than 1,000 impostor pairs cannot show an FMR of 0.1% at all.",
        "- The identity networks were trained mostly on Western faces; the cohort normalisation "
        "and the per-group operating points correct their scores, they do not make the networks "
        "see East Asian faces better.",
        f"- Seed {params.get('seed', '?')}; the same data, settings and seed give the same version.",
        *older_gender,
        "",
    ]
    return "\n".join(lines)


def write_model_card(directory: Path, metadata: dict) -> Path:
    path = Path(directory) / "MODEL_CARD.md"
    path.write_text(model_card(metadata), encoding="utf-8")
    return path
