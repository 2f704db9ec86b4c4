"""Deterministic synthetic ad records, generated from a schema file."""
