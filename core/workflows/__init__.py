"""What happens to members, each step in one database transaction: import, batch verification,
review decisions and the 1:N duplicate search.

importer   members from .xlsx/.csv with photos from files, a ZIP or links
batches    run the engine over pairs and store each result as it comes
reviews    reviewers' decisions on flagged pairs
search     the in-memory 1:N index over enrolled members, duplicate-account check

May import: core.verification, core.storage."""
