"""DoPut ingestion: conforming batches, writing Parquet, committing datasets."""
