"""Unwinding: x86-64 registers, memory readers, CFI tables and the frame-by-frame walk."""
