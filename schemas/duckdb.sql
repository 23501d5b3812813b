-- Analytics tables of the embedded DuckDB engine (OLAP).
-- Applied at start-up; every statement is idempotent.
-- Columns follow the architecture document. Partition columns of cdx_records are
-- derived from unix_timestamp; ingested Parquet data is partitioned by them.
--
-- The tables live in the schema `base`; queries read the views `main.<table>`, which
-- the server re-creates at start-up and after each put as the base table UNION ALL BY
-- NAME the dataset's ingested Parquet files (see flight_server/ingest/datasets.py).

CREATE SCHEMA IF NOT EXISTS base;

CREATE TABLE IF NOT EXISTS base.cdx_records (
    id               VARCHAR NOT NULL,
    domain           VARCHAR NOT NULL,
    original_url     VARCHAR NOT NULL,
    unix_timestamp   BIGINT  NOT NULL,   -- capture time, seconds since the epoch (UTC)
    mime_type        VARCHAR,
    status_code      INTEGER,
    content_length   BIGINT,
    archive_source   VARCHAR,
    project_id       VARCHAR,
    created_at       TIMESTAMP,
    partition_year   INTEGER,
    partition_month  INTEGER
);

CREATE TABLE IF NOT EXISTS base.content_analytics (
    page_id            VARCHAR,
    project_id         VARCHAR,
    extraction_method  VARCHAR,
    processing_time    FLOAT,      -- seconds spent extracting the page
    content_size       BIGINT,     -- bytes of extracted text
    word_count         INTEGER,
    entity_count       INTEGER,
    language           VARCHAR(5),
    quality_score      FLOAT,      -- 0.0 .. 1.0
    created_at         TIMESTAMP,
    date_captured      DATE
);

CREATE TABLE IF NOT EXISTS base.performance_metrics (
    metric_id       VARCHAR   NOT NULL,
    metric_type     VARCHAR   NOT NULL,
    value           DOUBLE    NOT NULL,
    dimensions      JSON,
    timestamp       TIMESTAMP NOT NULL,
    retention_days  INTEGER DEFAULT 90
);

-- Until the server adds the ingested files: the base tables alone. performance_metrics
-- shows its partition key, the UTC day of `timestamp`, like the Parquet files do.
CREATE OR REPLACE VIEW cdx_records AS SELECT * FROM base.cdx_records;
CREATE OR REPLACE VIEW content_analytics AS SELECT * FROM base.content_analytics;
CREATE OR REPLACE VIEW performance_metrics AS
    SELECT *, CAST("timestamp" AS DATE) AS partition_day FROM base.performance_metrics;
