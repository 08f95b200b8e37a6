"""The index of one compilation unit, ready to look up and to persist.

A unit's code is cut into *segments*: maximal address intervals over which the chain of scopes
(inlined instances nested in a subprogram) does not change. A lookup is then one bisect over the
segment starts plus one over the line rows, and the outer frames of a chain are built once and
reused. Everything is plain arrays and tuples, so `to_blob` / `from_blob` persist an index with
`marshal` and a warm run never decodes DWARF. `symbolizer.dwarf_build` builds it.
"""
from __future__ import annotations

import bisect
import marshal
from array import array
from dataclasses import dataclass, field

from symbolizer.dwarf_lines import LineTable
from symbolizer.frames import SourceFrame

# One scope: (name, inlined, call_file, call_line, call_column).
Scope = tuple[str | None, bool, str | None, int | None, int | None]
# One chain: (scope indexes innermost first, ending with the subprogram; the start and end of
# the subprogram range that contains the segment).
Chain = tuple[tuple[int, ...], int, int]
NO_CHAIN = 0xFFFFFFFF       # a segment no subprogram covers


@dataclass(frozen=True, slots=True)
class CuIndex:
    """Lookup structures of one unit.

    :param seg_starts: sorted segment start addresses; a segment ends where the next begins.
    :param seg_chains: for each segment the index of its chain in `chains`, or `NO_CHAIN`.
    :param scopes: the unit's subprograms and inlined instances with code (see `Scope`).
    :param lines: the unit's line rows.
    """

    seg_starts: array[int]
    seg_chains: array[int]
    chains: tuple[Chain, ...]
    scopes: tuple[Scope, ...]
    lines: LineTable
    _outer: dict[int, tuple[SourceFrame, ...]] = field(default_factory=dict, compare=False)

    def chain_at(self, elf_addr: int) -> Chain | None:
        """The scope chain covering `elf_addr`, None when no subprogram of the unit does."""
        i = bisect.bisect_right(self.seg_starts, elf_addr) - 1
        if i < 0:
            return None
        c = self.seg_chains[i]
        return None if c == NO_CHAIN else self.chains[c]

    def lookup(self, elf_addr: int) -> tuple[SourceFrame, ...]:
        """The frames at `elf_addr`, innermost first: () when nothing in the unit covers it, a
        single nameless frame when the line table does but no subprogram does."""
        row = self.lines.row_for(elf_addr)
        i = bisect.bisect_right(self.seg_starts, elf_addr) - 1
        c = self.seg_chains[i] if i >= 0 else NO_CHAIN
        if c == NO_CHAIN:
            if row is None:
                return ()
            return (SourceFrame(None, None, None, row[0], row[1], row[2], False),)
        outer = self._outer.get(c)
        if outer is None:
            outer = self._outer_frames(c)
        indexes, start, end = self.chains[c]
        name, inlined = self.scopes[indexes[0]][:2]
        file, line, column = row if row is not None else (None, None, None)
        if inlined:
            first = SourceFrame(name, None, None, file, line, column, True)
        else:
            first = SourceFrame(name, start, end - start, file, line, column, False)
        return (first,) + outer

    def _outer_frames(self, c: int) -> tuple[SourceFrame, ...]:
        """Frames 1.. of chain `c`: each at the call site of the instance inside it."""
        indexes, start, end = self.chains[c]
        frames = []
        for inner, index in zip(indexes, indexes[1:]):
            _, _, call_file, call_line, call_column = self.scopes[inner]
            name, inlined = self.scopes[index][:2]
            if inlined:
                frames.append(SourceFrame(name, None, None, call_file, call_line, call_column,
                                          True))
            else:
                frames.append(SourceFrame(name, start, end - start, call_file, call_line,
                                          call_column, False))
        outer = tuple(frames)
        self._outer[c] = outer
        return outer

    def to_blob(self) -> bytes:
        """This index as one marshal blob."""
        lines = self.lines
        return marshal.dumps((
            self.seg_starts.tobytes(), self.seg_chains.tobytes(), self.chains, self.scopes,
            lines.addrs.tobytes(), lines.file_idx.tobytes(), lines.lines.tobytes(),
            lines.columns.tobytes(), lines.files))

    @staticmethod
    def from_blob(blob: bytes) -> CuIndex:
        """Rebuild an index from `to_blob` output."""
        (seg_starts, seg_chains, chains, scopes, addrs, file_idx, lines, columns,
         files) = marshal.loads(blob)
        return CuIndex(_arr("Q", seg_starts), _arr("I", seg_chains), chains, scopes,
                       LineTable(_arr("Q", addrs), _arr("I", file_idx), _arr("I", lines),
                                 _arr("I", columns), files))


def _arr(code: str, raw: bytes) -> array[int]:
    out = array(code)
    out.frombytes(raw)
    return out
