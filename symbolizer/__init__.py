"""Symbolization: process maps, ELF symbols, debug-file lookup and the DWARF address index."""
