"""Result-cache benchmarks: `python -m bench.cache [--rows N] [--quick]`.

- B8: L1 hit round trip of a small named query (`domains.statistics` for example.com,
  one DoGet with the command as its ticket), p50, vs the same query uncached
  (`"cache": "bypass"`); target: hit p50 <= 1.5 ms on loopback.
- B9: L2 hit vs miss of the catalogue's heavy aggregations, on a server with L1 off
  (`FLIGHT_CACHE__L1_MAX_ENTRIES=0`): miss = `"cache": "refresh"` (runs and stores),
  hit = `"cache": "use"`; target >= 10x faster (geometric mean and per query).
- B10: L2 hit of a ~50 MB result (`SELECT * FROM cdx_records LIMIT n`) on the L1-off
  server vs the same result from L1 on a second server; throughput, target >= 0.5x.
  Diagnostics: the same L2 hit from servers writing the other codecs' entries.
- B11: IPC encoding of typical results with none, LZ4 and ZSTD (`encode_table` /
  `decode_table`, in process): bytes, encode and decode time, and the Redis SET+GET
  round trip of each value; a recommended codec.

The servers run as `flight-server serve` processes side by side, each over its own copy
of the same demo data (DuckDB allows one process per file): L1+L2 (B8, B10's baseline),
L2 only (B9, B10), and diagnostic ones that show where time goes: L1 without Redis (B8),
L2 only with entries in each of the other codecs (B10). They share one Redis with a key
prefix unique to this run; every key under it is deleted at the end. Baselines and
candidates are interleaved over the repetitions (the order alternates or rotates) and
reported as medians.
Writes bench/results/cache.json and cache.md and prints the Markdown table.
"""
