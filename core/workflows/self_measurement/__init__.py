"""Self-measurement: the false-match rate at the approve point, counted on the members' own photos.

Every current photo of one member against every current photo of another member of the same
registered gender is a pair of two different people, except pairs already flagged as possible
duplicate accounts and pairs a reviewer marked as the same person. Only same-gender pairs are the
impostor population: a cross-gender pair is never compared (the gender check stops it first, and
it would make the rate look better than it is). With N members that is about N^2/4 pairs, from
the very population being verified, with no labelling.

How it scores: exactly as the engine and the 1:N index do. Each photo's pretrained embedding (the
`embeddings` table) goes through the model version's Siamese tower; the similarity of two photos is
PairSimilarity's sigmoid(scale * (offset - ||a - b||)) of their projections, the calibrated output
the policy's approve_at and reject_below are set on. It falls with the Euclidean distance, so a
similarity floor is a distance ceiling. Blocks of rows are multiplied against the later rows of
their gender (one float32 matrix product per block and column chunk, with each row's squared norm
carried in two extra columns, so the product is -||a - b||^2 / 2 directly); only pairs above the
floor leave the block, so N^2 pairs are never held. Pairs near or above approve_at are scored
again in float64 from the projections, so the count at approve_at is the engine's own decision.
The projections are written once to a temporary file (store.ProjectionFile, in TMPDIR: 1 KB a
photo, 2 GB at a million members) and read back by row range into each block's buffers, so the
process holds the tower and a few blocks, never the matrix.
Blocks are scanned on one thread per core, each with a single-threaded BLAS (a busy core slows
one block, not every product), and still commit one by one in order.

A measurement is one row per model version and UTC day (run_key). Each block's counts and pairs
commit together with the number of blocks done, so a run killed half-way resumes at the next
block; if the photos or exclusions changed meanwhile it starts again from zero (never doubled).

    measure(session_factory, model, triggered_by="system", ...) -> dict   run or resume; the summary
    clopper_pearson_upper(k, n, confidence=0.95) -> float                 one-sided upper bound
    alert_state(session, model_version=None) -> AlertState                what the banner, KPI page and /health say
    latest(session, model_version=None) -> SelfMeasurement | None         newest completed measurement
    pairs_at_approve(session, run_id, limit) -> list[SelfMeasurementPair] what a reviewer opens
    record_verdict(session, member_a, member_b, same_person, reviewer)    a reviewer's word on two members
    refit_plan(session, run_id) -> dict                                   approve_at and measured FMR, before and after
    write_refit_version(session, run_id, actor, ...) -> str               a new model version, approve_at re-fitted
    schedule_interval_s() -> float | None                                 SELF_MEASURE_EVERY_HOURS

Modules: settings (constants, settings, errors), stats (the bound, the similarity scale, the
summary and its alert status), photos (the photos measured, projected; the reviewed genuine pairs),
store (the projections' file), scan (pairs compared and the block scan), run (the resumable run,
the job, the schedule), results (reading stored measurements, the alert state, verdicts), refit
(approve_at re-fitted as a version).

Settings (environment, then secrets.toml):
    SELF_MEASURE_EVERY_HOURS   hours between scheduled measurements (default 24; 'off' to stop)
    SELF_MEASURE_FMR_TARGET    the false-match rate the 95% bound must stay under (default 0.001)
    SELF_MEASURE_FLOOR         similarity below which neighbours are not kept (default 0.1; at most
                               half of approve_at)
    SELF_MEASURE_PAIRS_KEPT    pairs at or above approve_at kept for review per run (default 2000)
    SELF_MEASURE_BLOCK_ROWS    rows per block (default 2048): memory ~ block x 2048 x 5 bytes per core
    SELF_MEASURE_PHOTOS        'all' (gallery and verification photos, default) or 'gallery'
    SELF_MEASURE_AFTER_PROMOTION  'on' (default) or 'off': measure a version when it is promoted
"""

from core.storage.schema import SelfMeasurement, SelfMeasurementPair  # noqa: F401
from core.workflows.self_measurement.photos import (  # noqa: F401
    PhotoSet,
    build_photo_set,
    load_photo_set,
    model_scale,
    project,
    reviewed_fnmr,
)
from core.workflows.self_measurement.refit import (  # noqa: F401
    refit_plan,
    refit_point,
    score_automation,
    write_refit_version,
)
from core.workflows.self_measurement.results import (  # noqa: F401
    AlertState,
    active_version,
    alert_state,
    health_field,
    history,
    latest,
    pairs_at_approve,
    record_verdict,
)
from core.workflows.self_measurement.run import JOB_NAME, due, measure, run_job  # noqa: F401
from core.workflows.self_measurement.scan import (  # noqa: F401
    BlockResult,
    add_counts,
    blocks,
    compared_pairs,
    empty_counts,
    scan_block,
)
from core.workflows.self_measurement.settings import (  # noqa: F401
    AGE_BANDS,
    COLUMN_CHUNK,
    COMPLETED,
    CONFIDENCE,
    DEFAULT_BLOCK_ROWS,
    DEFAULT_EVERY_HOURS,
    DEFAULT_FLOOR,
    DEFAULT_FMR_TARGET,
    DEFAULT_PAIRS_KEPT,
    EXACT_CHUNK,
    EXACT_MARGIN,
    FAILED,
    GENDERS,
    HISTOGRAM_BINS,
    INTERRUPTED,
    LOAD_CHUNK,
    PAIR_VERDICT,
    REFIT,
    RUNNING,
    SELF_MEASURE,
    STALE_AFTER,
    TAIL_THRESHOLDS,
    MeasurementRunning,
    SelfMeasurementError,
    fmr_target,
    photo_kinds,
    schedule_interval_s,
    similarity_floor,
)
from core.workflows.self_measurement.stats import (  # noqa: F401
    ABOVE_TARGET,
    NOT_MEASURED,
    OK,
    TOO_FEW,
    Scale,
    clopper_pearson_upper,
    pairs_needed,
    summarise,
)
