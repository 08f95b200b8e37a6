"""The unit every capture path produces and every later stage consumes.

A `Snapshot` is one thread at one instant: its registers, the bytes of its user stack from the
stack pointer upward (as far as they were copied), and the process's memory map at that moment.
`ubt stack` builds it with ptrace; `ubt process` builds it from a BPF ring-buffer record. Both
then go through the same unwind → symbolize pipeline, which needs nothing else, so a snapshot can
be saved and replayed offline (`ubt stack --save` / `--load`). A saved snapshot also records the
build-id of each module, so a replay uses the very code that ran: a file that is gone or was
replaced by another build is fetched by build-id instead (see `symbolizer.module`).
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from symbolizer.maps import ProcessMaps
from unwind.memory import StackBytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Registers + stack bytes + maps of one thread at one instant.

    :param regs: DWARF register number → value (see `unwind.regs`).
    :param stack: user stack bytes starting at the stack pointer; a read beyond them is a
        memory fault, which the unwinder reports as a truncated stack.
    :param maps_text: the text of /proc/PID/maps when the snapshot was taken.
    :param time_ns: CLOCK_MONOTONIC (ptrace path) or BPF ktime of the capture.
    :param build_ids: start of each module's mappings → its build-id, when recorded (saved
        snapshots); empty: the files named by the maps are trusted.
    """

    pid: int
    tid: int
    comm: str
    regs: Mapping[int, int]
    stack: StackBytes
    maps_text: str
    time_ns: int
    build_ids: Mapping[int, str] = field(default_factory=dict)

    @property
    def maps(self) -> ProcessMaps:
        """The process's mappings at capture time."""
        return ProcessMaps.from_text(self.maps_text)

    def to_json(self) -> str:
        """Serialize for offline replay (`from_json` reverses it)."""
        return json.dumps({
            "pid": self.pid, "tid": self.tid, "comm": self.comm,
            "regs": {str(k): v for k, v in self.regs.items()},
            "stack_base": self.stack.base,
            "stack": base64.b64encode(self.stack.data).decode(),
            "maps": self.maps_text, "time_ns": self.time_ns,
            "build_ids": {f"{k:x}": v for k, v in self.build_ids.items()},
        })

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        """Rebuild a snapshot saved by `to_json`.

        :raises ValueError: not a saved snapshot (the message says what is wrong).
        """
        try:
            d: dict[str, Any] = json.loads(text)
            return cls(pid=int(d["pid"]), tid=int(d["tid"]), comm=str(d["comm"]),
                       regs={int(k): int(v) for k, v in d["regs"].items()},
                       stack=StackBytes(int(d["stack_base"]),
                                        base64.b64decode(d["stack"], validate=True)),
                       maps_text=str(d["maps"]), time_ns=int(d["time_ns"]),
                       build_ids={int(k, 16): str(v)
                                  for k, v in d.get("build_ids", {}).items()})
        except KeyError as e:
            raise ValueError(f"no {e.args[0]!r} field") from None
        except (TypeError, AttributeError, binascii.Error) as e:
            raise ValueError(str(e) or type(e).__name__) from None
