"""Readers for each source format; each turns a source into rows for ingest."""
