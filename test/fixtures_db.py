"""Fixtures that start the embedded Postgres (core.embedded_db) for tests."""
