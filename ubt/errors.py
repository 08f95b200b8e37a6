"""Errors that end a whole ubt command with one line on stderr and a non-zero exit.

Per-item problems (one address that cannot be symbolized, one stack that stops early) are
results, not errors: they travel as reasons on the item. Only what makes the whole command
meaningless is raised as a `UbtError`, and the CLI prints its message without a traceback.
"""
from __future__ import annotations


class UbtError(Exception):
    """A failure of the whole operation; `str(err)` is the one line shown to the user."""

    exit_code = 1


class UsageError(UbtError):
    """The command line asks for something impossible (exit status 2, like argparse)."""

    exit_code = 2


class ProcessGone(UbtError):
    """The target process does not exist, or exited while ubt was reading it."""

    def __init__(self, pid: int, detail: str = "") -> None:
        self.pid = pid
        super().__init__(f"process {pid} {detail or 'does not exist'}")


class AttachDenied(UbtError):
    """ptrace may not attach to the target (permissions, Yama, already traced)."""

    def __init__(self, pid: int, detail: str) -> None:
        self.pid = pid
        super().__init__(f"cannot attach to process {pid}: {detail}")
