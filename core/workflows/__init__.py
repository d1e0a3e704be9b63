"""What happens to members, each step in one database transaction: the only layer that decides and
writes (the API, the pages and the jobs are adapters over it).

verification  verify a member (the page's and the API's one use case); the registered gender's
           own change
member_photos  set_current_photos for every writer of a member's photos
importer   members from .xlsx/.csv with photos from files, a ZIP or links
batches    run the engine over pairs and store each result as it comes
reviews    reviewers' decisions on flagged pairs
search     the in-memory 1:N index over enrolled members, duplicate-account check
photo_checks  the fraud checks against the member's stored photos, run when a result is stored
gallery    adding a gallery photo to an existing member (compared, reviewed when it differs)
reverification  re-run members on a newly promoted model
privacy    erasure, retention, audited photo views, export, key rotation
links      photo links fetched only from public hosts
spreadsheets  .xlsx/.csv read safely; downloads escaped against formulas

Domain code creates rows and returns ids; core.jobs decides where long work runs.
May import: core.verification, core.storage (and core.jobs in the importer's command line only)."""
