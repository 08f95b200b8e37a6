"""BPF programs run by ubt (filled in by the live-tracing issue)."""
