"""Fixtures of the unit tests: ``tiny`` (one loaded tiny checkpoint per family, built on first use)."""

from tests.unit.tiny_support import tiny  # noqa: F401 - a fixture, found by name
