"""Oracles for the integration tests: gdb (stacks), eu-addr2line and llvm-symbolizer (addresses).

Each runner returns plain data (dicts, dataclasses) so the tests can diff it against ubt's JSON.
"""
