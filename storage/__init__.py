"""Stores: the ledger (SQLite) and the time-series store (embedded DuckDB; InfluxDB to follow)."""
