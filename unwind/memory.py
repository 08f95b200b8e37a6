"""Memory readers: where the unwinder reads saved registers and return addresses from.

A captured snapshot carries only the stack bytes from the stack pointer upward (`StackBytes`); a
live process can be read through ``/proc/PID/mem`` (`ProcMemory`); `LayeredMemory` tries several
in order (captured stack first, then e.g. the live process). Every reader raises `MemoryFault`
for bytes it cannot supply, which the unwinder reports as a truncated stack rather than an error.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

_U64 = struct.Struct("<Q")


class MemoryFault(Exception):
    """A read touched memory the reader cannot supply (not captured, unmapped, or gone)."""

    def __init__(self, address: int, size: int = 8) -> None:
        super().__init__(f"cannot read {size} bytes at {address:#x}")
        self.address = address
        self.size = size


class MemoryReader(Protocol):
    """Anything that can read target-process memory by absolute address."""

    def read(self, addr: int, size: int) -> bytes:
        """Exactly `size` bytes at `addr`, or raise `MemoryFault`."""
        ...


@dataclass(frozen=True, slots=True)
class StackBytes:
    """Bytes copied from a thread's stack: `data` holds memory at ``base .. base+len(data)``."""

    base: int
    data: bytes

    @property
    def end(self) -> int:
        """First address past the captured bytes."""
        return self.base + len(self.data)

    def read(self, addr: int, size: int) -> bytes:
        """Bytes at `addr`; anything outside the capture is a `MemoryFault`."""
        off = addr - self.base
        if off < 0 or size < 0 or off + size > len(self.data):
            raise MemoryFault(addr, size)
        return self.data[off:off + size]

    def read_u64(self, addr: int) -> int:
        """The little-endian 64-bit word at `addr` (the unwinder's common read)."""
        off = addr - self.base
        if off < 0 or off + 8 > len(self.data):
            raise MemoryFault(addr, 8)
        value: int = _U64.unpack_from(self.data, off)[0]
        return value


class ProcMemory:
    """Memory of a live process through ``/proc/PID/mem`` (needs ptrace access to it).

    The file is opened on first use and kept open until `close` (or the end of a ``with``).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = None

    def read(self, addr: int, size: int) -> bytes:
        """Bytes at `addr`; unmapped or unreadable memory (EIO, short read) is a `MemoryFault`."""
        if addr < 0 or size < 0:
            raise MemoryFault(addr, size)
        if self._fd is None:
            try:
                self._fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY)
            except OSError:
                raise MemoryFault(addr, size) from None
        try:
            data = os.pread(self._fd, size, addr)
        except (OSError, OverflowError):
            raise MemoryFault(addr, size) from None
        if len(data) != size:
            raise MemoryFault(addr, size)
        return data

    def close(self) -> None:
        """Release the file descriptor (reading again reopens it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ProcMemory:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class LayeredMemory:
    """Several readers tried in order; the first that can supply the bytes wins."""

    def __init__(self, *readers: MemoryReader) -> None:
        self.readers = readers

    def read(self, addr: int, size: int) -> bytes:
        """Bytes from the first reader that has them, else `MemoryFault`."""
        for reader in self.readers:
            try:
                return reader.read(addr, size)
            except MemoryFault:
                continue
        raise MemoryFault(addr, size)
