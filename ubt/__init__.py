"""ubt: full user-space backtraces for programs built without frame pointers.

The CLI (`ubt.cli`) and the pipeline that joins the top-level engines: `unwind` (CFI unwinder),
`symbolizer` (addresses to functions, inline chains and file:line) and, later, `debuginfod` and
`bpf_progs`.
"""
