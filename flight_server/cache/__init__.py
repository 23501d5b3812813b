"""The result cache: L1 in memory, L2 in Redis, keyed by data versions; and its warming."""
