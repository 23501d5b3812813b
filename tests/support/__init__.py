"""Helpers of the tests: servers, tokens, waiting, proxies, processes, Flight SQL, sync and ingest."""
