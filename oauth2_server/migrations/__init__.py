"""Alembic migration scripts: one history for PostgreSQL and SQLite."""
