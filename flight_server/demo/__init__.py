"""Deterministic demo data for the analytics tables (and the OLTP tables that go with them)."""
