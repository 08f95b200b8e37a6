"""debuginfod client (filled in by the debuginfod issue)."""
