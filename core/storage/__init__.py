"""Everything that is kept: the database (engine, sessions, schema, Alembic migrations), the photo
store, the audit log, users and passwords, and the read queries the pages need.

db               engine, sessions, `faceverify db upgrade|current`
schema           the ORM tables (must match the newest migration)
schema_guards    the tables that guard the service: API keys, challenges, throttling, audit chain
migrations/      Alembic revisions
retry            deadlocks and lock waits retried with backoff, then "busy, retry"
photostore       photos once per content hash: the interface and the folder store
s3store          the same interface on an S3-compatible bucket
stores           open the store the settings name (PHOTO_STORE_URL)
photo_copy       copy a store into another, resumable, checked by hash
encryption       optional AES-GCM of photos at rest, the keys
key_rotation     rewrite a store under the current key
audit            who saw or decided what, and when, as a hash chain
users            users, roles, argon2id passwords
throttle         failed sign-ins and API keys slowed down, then locked
challenges       single-use pose challenges
queries          the pages' read queries, bound parameters only

May import: core.config, core.errors, core.verification (for result types and features)."""
