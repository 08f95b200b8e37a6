"""The compiled unwind table of one module: for each elf_addr range, how to find the caller.

CFI (``.eh_frame``/``.debug_frame``) is a byte-code per function; interpreting it on every
unwind would be far too slow, so `unwind.cfi` runs it once per module and stores the result
here: rows sorted by start address in `array` columns, each pointing at a deduplicated *rule
set* (libc's ~30k rows share a few thousand distinct rule sets). The table serializes to a
compact byte string (array buffers + marshal) that loads back in about a millisecond.

Rule sets are plain tuples (`RawRule`) because the unwinder's hot loop reads them directly;
`row_for` wraps one in the descriptive `UnwindRow` for everything else.
"""
from __future__ import annotations

import marshal
from array import array
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Union

from lru import LRU

from .regs import RA


class RuleKind(IntEnum):
    """How a register of the caller is recovered (DWARF 5 section 6.4.1)."""

    UNDEFINED = 0       #: not recoverable (for the return address: outermost frame)
    SAME_VALUE = 1      #: unchanged from this frame
    OFFSET = 2          #: saved in memory at CFA + value
    VAL_OFFSET = 3      #: the value is CFA + value
    REGISTER = 4        #: held in register number `value`
    EXPRESSION = 5      #: saved in memory at the address the expression computes (CFA pushed)
    VAL_EXPRESSION = 6  #: the value is what the expression computes (CFA pushed)


#: One register rule as stored: (DWARF register, RuleKind, offset | register | expression).
RawRegRule = tuple[int, int, Union[int, bytes]]
#: One rule set as stored: (cfa_reg, cfa_offset, cfa_expr, reg rules sorted by register,
#: signal_frame, simple). cfa_reg is -1 when the CFA is an expression. `simple` says the CFA is
#: register + offset and every rule is OFFSET with one for the return address: the unwinder's
#: fast path.
RawRule = tuple[int, int, Union[bytes, None], tuple[RawRegRule, ...], bool, bool]

_FORMAT = 1
_LRU_SIZE = 8192
_NO_ROW: tuple[()] = ()


class TableFormatError(ValueError):
    """Bytes given to `UnwindTable.from_bytes` are not a table of this format version."""


def make_rule(cfa_reg: int, cfa_offset: int, cfa_expr: bytes | None,
              rules: tuple[RawRegRule, ...], signal_frame: bool) -> RawRule:
    """Build a stored rule set, computing its `simple` flag (kinds stored as plain ints)."""
    rules = tuple((reg, int(kind), val) for reg, kind, val in rules)
    simple = (cfa_expr is None and all(kind == RuleKind.OFFSET for _, kind, _ in rules)
              and any(reg == RA for reg, _, _ in rules))
    return (cfa_reg, cfa_offset, cfa_expr, rules, signal_frame, simple)


@dataclass(frozen=True, slots=True)
class CfaRule:
    """How to compute the CFA: `reg` + `offset`, or (`reg` None) by evaluating `expr`."""

    reg: int | None
    offset: int
    expr: bytes | None


@dataclass(frozen=True, slots=True)
class RegRule:
    """How to recover one register: `value` is the offset or register number for the kind."""

    kind: RuleKind
    value: int = 0
    expr: bytes | None = None


@dataclass(frozen=True, slots=True)
class UnwindRow:
    """The rules valid for ``start <= elf_addr < end``.

    Registers without a rule keep their value (the x86-64 convention for callee-saved ones);
    `signal_frame` marks a signal trampoline (CIE augmentation ``S``).
    """

    start: int
    end: int
    cfa: CfaRule
    regs: Mapping[int, RegRule]
    signal_frame: bool


def _describe(start: int, end: int, raw: RawRule) -> UnwindRow:
    cfa_reg, cfa_off, cfa_expr, rules, signal, _ = raw
    cfa = CfaRule(None if cfa_reg < 0 else cfa_reg, cfa_off, cfa_expr)
    regs: dict[int, RegRule] = {}
    for reg, kind, val in rules:
        if isinstance(val, bytes):
            regs[reg] = RegRule(RuleKind(kind), 0, val)
        else:
            regs[reg] = RegRule(RuleKind(kind), val)
    return UnwindRow(start, end, cfa, regs, signal)


class UnwindTable:
    """Sorted, non-overlapping rows of one module, keyed by elf_addr."""

    __slots__ = ("starts", "ends", "index", "rules", "_cache")

    def __init__(self, starts: array[int], ends: array[int], index: array[int],
                 rules: tuple[RawRule, ...]) -> None:
        """Columns must be equally long, sorted by start and non-overlapping (`unwind.cfi`
        builds them so); ``index[i]`` selects the rule set of row i in `rules`."""
        self.starts = starts
        self.ends = ends
        self.index = index
        self.rules = rules
        self._cache: LRU[int, RawRule | tuple[()]] = LRU(_LRU_SIZE)

    def __len__(self) -> int:
        return len(self.starts)

    def raw_for(self, elf_addr: int) -> RawRule | None:
        """The stored rule set covering `elf_addr` (memoized: unwinding revisits few pcs)."""
        hit: RawRule | tuple[()] | None = self._cache.get(elf_addr)
        if hit is None:
            i = bisect_right(self.starts, elf_addr) - 1
            if i >= 0 and elf_addr < self.ends[i]:
                hit = self.rules[self.index[i]]
            else:
                hit = _NO_ROW
            self._cache[elf_addr] = hit
        return hit or None

    def row_for(self, elf_addr: int) -> UnwindRow | None:
        """The row covering `elf_addr`, or None when no CFI describes it."""
        i = bisect_right(self.starts, elf_addr) - 1
        if i < 0 or elf_addr >= self.ends[i]:
            return None
        return _describe(self.starts[i], self.ends[i], self.rules[self.index[i]])

    def rows(self) -> Iterator[UnwindRow]:
        """Every row in address order."""
        for start, end, idx in zip(self.starts, self.ends, self.index):
            yield _describe(start, end, self.rules[idx])

    def to_bytes(self) -> bytes:
        """Serialize (native byte order: caches are per machine)."""
        return marshal.dumps((_FORMAT, self.starts.tobytes(), self.ends.tobytes(),
                              self.index.tobytes(), self.rules))

    @classmethod
    def from_bytes(cls, data: bytes) -> UnwindTable:
        """Rebuild a table written by `to_bytes`.

        :raises TableFormatError: the bytes are truncated, corrupt or of another version.
        """
        try:
            fmt, starts_b, ends_b, index_b, rules = marshal.loads(data)
            if fmt != _FORMAT or not isinstance(rules, tuple):
                raise TableFormatError(f"unwind table format {fmt!r}, expected {_FORMAT}")
            starts, ends, index = array("Q"), array("Q"), array("I")
            starts.frombytes(starts_b)
            ends.frombytes(ends_b)
            index.frombytes(index_b)
        except TableFormatError:
            raise
        except (ValueError, EOFError, TypeError) as e:
            raise TableFormatError(f"corrupt unwind table: {e}") from None
        if not len(starts) == len(ends) == len(index) or (index and max(index) >= len(rules)):
            raise TableFormatError("corrupt unwind table: inconsistent columns")
        return cls(starts, ends, index, rules)
