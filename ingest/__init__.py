"""Ingest: readings from meters and files, validated in one place, into the time-series store."""
