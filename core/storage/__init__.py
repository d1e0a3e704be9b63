"""Everything that is kept: the database (engine, sessions, schema, Alembic migrations), the photo
store, the audit log, users and passwords, and the read queries the pages need.

db               engine, sessions, `python -m core.db upgrade|current`
schema           the ORM tables (must match the newest migration)
migrations/      Alembic revisions
photostore       photos once per content hash
audit            who saw or decided what, and when
users            users, roles, argon2id passwords
queries          the pages' read queries, bound parameters only

May import: core.config, core.errors, core.verification (for result types and features)."""
