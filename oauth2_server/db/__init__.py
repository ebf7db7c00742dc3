"""Storage foundations: engine, sessions, ORM models and migrations."""
