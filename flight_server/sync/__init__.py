"""Change data capture from PostgreSQL into DuckDB replicas."""
