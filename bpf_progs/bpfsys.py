"""The few bpf(2) commands ubt needs, called directly: create maps, load a program, read and
write map elements, link uprobes.

bcc does all of this too, but only for a program it has just compiled with clang (~0.4 s and
~100 MB per run). Loading a compiled program ourselves (see `objcache`) needs only these
commands; `union bpf_attr` is laid out field by field from uapi/linux/bpf.h.
"""
from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

_NR_BPF = 321  # x86-64
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
PROG_LOAD = 5
OBJ_GET_INFO_BY_FD = 15
LINK_CREATE = 28
MAP_LOOKUP_BATCH = 24

PROG_TYPE_KPROBE = 2
#: BPF_F_SLEEPABLE: the program may fault user pages in (``bpf_copy_from_user``).
PROG_SLEEPABLE = 1 << 4
_ATTR_SIZE = 128
_LOG_SIZE = 1 << 20


class BpfError(OSError):
    """A bpf(2) command failed; `strerror` says which and why (the verifier's last lines too)."""


def bpf(cmd: int, attr: bytearray) -> int:
    """Run one bpf(2) command on a zero-padded `union bpf_attr`; returns its result (an fd for
    the commands that make one). Raises `BpfError` with errno on failure."""
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    res = int(_libc.syscall(_NR_BPF, ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr))))
    if res < 0:
        err = ctypes.get_errno()
        raise BpfError(err, os.strerror(err))
    return res


@dataclass(frozen=True, slots=True)
class MapSpec:
    """What BPF_MAP_CREATE needs to make a map again: as read back from a map bcc created."""

    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


def map_info(fd: int) -> MapSpec:
    """Read a map's definition back from its fd (BPF_OBJ_GET_INFO_BY_FD)."""
    info = ctypes.create_string_buffer(80)  # struct bpf_map_info up to name[16] and beyond
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIQ", attr, 0, fd, len(info), ctypes.addressof(info))
    bpf(OBJ_GET_INFO_BY_FD, attr)
    map_type, _id, key, value, entries, flags = struct.unpack_from("<6I", info.raw, 0)
    name = info.raw[24:40].split(b"\0", 1)[0].decode()
    return MapSpec(name, map_type, key, value, entries, flags)


def map_create(spec: MapSpec) -> int:
    """Create a map like `spec`; returns its fd."""
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<5I", attr, 0, spec.map_type, spec.key_size, spec.value_size,
                     spec.max_entries, spec.flags)
    attr[28:28 + 15] = spec.name.encode()[:15].ljust(15, b"\0")
    try:
        return bpf(MAP_CREATE, attr)
    except BpfError as e:
        raise BpfError(e.errno, f"map {spec.name}: {e.strerror}") from None


def map_update(fd: int, key: bytes, value: bytes) -> None:
    """Set one element (BPF_ANY)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIQQQ", attr, 0, fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0)
    bpf(MAP_UPDATE_ELEM, attr)


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """One element's value (`value_size` bytes; per-CPU maps: rounded to 8, times the number of
    possible CPUs), or None when there is none."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIQQQ", attr, 0, fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0)
    try:
        bpf(MAP_LOOKUP_ELEM, attr)
    except BpfError as e:
        if e.errno == 2:  # ENOENT
            return None
        raise
    return v.raw


def map_lookup_batch(fd: int, key_size: int, value_size: int,
                     chunk: int = 65536) -> tuple[bytes, bytes, int]:
    """Every element of a hash map, `chunk` at a time (BPF_MAP_LOOKUP_BATCH: one system call
    per chunk instead of two per element). Returns (keys, values, count): the keys and the
    values packed back to back. Elements added or removed meanwhile may be missed or seen."""
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    token_in = ctypes.create_string_buffer(8)
    token_out = ctypes.create_string_buffer(8)
    key_parts: list[bytes] = []
    value_parts: list[bytes] = []
    total = 0
    first = True
    while True:
        attr = bytearray(_ATTR_SIZE)
        struct.pack_into("<QQQQIIQQ", attr, 0, 0 if first else ctypes.addressof(token_in),
                         ctypes.addressof(token_out), ctypes.addressof(keys),
                         ctypes.addressof(values), chunk, fd, 0, 0)
        done = False
        try:
            bpf(MAP_LOOKUP_BATCH, attr)
        except BpfError as e:
            if e.errno != 2:  # ENOENT: this was the last chunk
                raise
            done = True
        (got,) = struct.unpack_from("<I", attr, 32)  # the kernel writes back how many
        key_parts.append(keys.raw[:got * key_size])
        value_parts.append(values.raw[:got * value_size])
        total += got
        if done:
            return b"".join(key_parts), b"".join(value_parts), total
        ctypes.memmove(token_in, token_out, 8)
        first = False


def prog_load(insns: bytes, license: str, prog_type: int, expected_attach_type: int,
              name: str, flags: int = 0) -> int:
    """Load (and have the kernel verify) a program; returns its fd. On a verifier refusal the
    error carries the end of the verifier's log. `flags`: ``BPF_F_*`` (`PROG_SLEEPABLE`)."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIQQIIQII", attr, 0, prog_type, len(insns) // 8, ctypes.addressof(code),
                     ctypes.addressof(lic), 0, 0, 0, 0, 0)
    struct.pack_into("<I", attr, 44, flags)
    attr[48:48 + 15] = name.encode()[:15].ljust(15, b"\0")
    struct.pack_into("<I", attr, 68, expected_attach_type)
    try:
        return bpf(PROG_LOAD, attr)
    except BpfError as e:
        first = e
    # Again with the verifier's log, only to explain the failure (logging slows verification).
    log = ctypes.create_string_buffer(_LOG_SIZE)
    struct.pack_into("<IIQ", attr, 24, 1, _LOG_SIZE, ctypes.addressof(log))
    try:
        return bpf(PROG_LOAD, attr)
    except BpfError:
        tail = " | ".join(log.value.decode(errors="replace").strip().splitlines()[-3:])
        raise BpfError(first.errno, f"{first.strerror}: {tail}" if tail else first.strerror) \
            from None


def possible_cpus() -> int:
    """How many CPUs per-CPU maps hold values for (/sys/devices/system/cpu/possible)."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count
