"""Everything needed before a uprobe program can be compiled (bcc) and loaded on this machine.

- root (BPF and uprobes need CAP_SYS_ADMIN/CAP_BPF+CAP_PERFMON; we ask for root plainly);
- tracefs mounted (without it attaching works but detaching fails at exit, leaving probes);
- kernel headers: bcc compiles C with clang at run time and looks under
  `/lib/modules/$(uname -r)/build`. The running kernel often has no headers package, but uprobe
  programs only need `struct pt_regs`, which any x86-64 kernel's headers describe identically,
  so Debian's `linux-headers-amd64` serves through `BCC_KERNEL_SOURCE` (the `-common` tree) plus
  include flags for the `-amd64` generated headers, without touching `/lib/modules`.
"""
from __future__ import annotations

import glob
import os
import subprocess
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

from .errors import UbtError

_TRACEFS = "/sys/kernel/tracing"


def require_root(what: str) -> None:
    """Fail with one line unless running as root."""
    if os.geteuid() != 0:
        raise UbtError(f"{what} needs root (BPF programs and uprobes); run it with sudo")


def ensure_tracefs() -> None:
    """Mount tracefs at /sys/kernel/tracing when it is empty."""
    if os.path.exists(os.path.join(_TRACEFS, "uprobe_events")):
        return
    res = subprocess.run(["mount", "-t", "tracefs", "nodev", _TRACEFS],
                         capture_output=True, text=True)
    if res.returncode != 0 and not os.path.exists(os.path.join(_TRACEFS, "uprobe_events")):
        raise UbtError(f"cannot mount tracefs on {_TRACEFS}: {res.stderr.strip()}")


@lru_cache(maxsize=1)
def kernel_cflags() -> tuple[str, ...]:
    """Set `BCC_KERNEL_SOURCE` when the running kernel has no headers; return extra cflags."""
    release = os.uname().release
    if os.path.isdir(f"/lib/modules/{release}/build/include"):
        return ()
    arch = sorted(glob.glob("/usr/src/linux-headers-*-amd64"))
    common = sorted(glob.glob("/usr/src/linux-headers-*-common"))
    if not arch or not common:
        raise UbtError("no kernel headers for bcc: install Debian's linux-headers-amd64 "
                       "(make bootstrap does)")
    os.environ.setdefault("BCC_KERNEL_SOURCE", common[-1])
    gen = arch[-1]
    return (f"-I{gen}/arch/x86/include/generated", f"-I{gen}/include",
            f"-I{gen}/arch/x86/include/generated/uapi", f"-I{gen}/include/generated/uapi")


def prepare(what: str) -> None:
    """Root and tracefs, in order. Kernel headers (`kernel_cflags`) are looked for only when a
    program has to be compiled: a cached one loads without them."""
    require_root(what)
    ensure_tracefs()



T = TypeVar("T")


def load_capture(make: Callable[[], T], cleanup: Callable[[], None]) -> T:
    """`make()` (load a BPF program, attach its uprobes); on failure `cleanup()` runs and a
    load or attach error becomes one line (a `UbtError`), anything else is raised as it is."""
    from bpf_progs.bpfsys import BpfError
    from bpf_progs.uprobe_link import AttachError

    try:
        return make()
    except BaseException as e:
        cleanup()
        if isinstance(e, AttachError):
            raise UbtError(f"cannot attach: {e.strerror} (another tracer holding a probe at "
                           "the same address makes the kernel refuse)") from None
        if isinstance(e, BpfError):
            raise UbtError(f"BPF program could not be loaded: {e.strerror}") from None
        if isinstance(e, Exception) and not isinstance(e, UbtError):
            raise UbtError(f"BPF program could not be loaded: {str(e).splitlines()[0]}") \
                from None
        raise
