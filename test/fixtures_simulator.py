"""Fixtures that start the OpenAI-compatible simulator (core.simulator) for tests."""
