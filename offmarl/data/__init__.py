"""Offline multi-agent datasets: the in-memory format, storage, importers and generation."""
