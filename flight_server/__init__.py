"""Chrono Flight: an Arrow Flight analytics server over DuckDB and PostgreSQL."""

__version__ = "0.1.0"
