"""Streaming ingest: per-symbol pipelines and the Ray actors that hold exchange WebSocket connections."""
