"""ubt: user-space backtraces, statement probes and leak detection over BPF uprobes."""
from setuptools import setup

setup(
    name="ubt",
    version="0.1.0",
    description="Full user-space backtraces at uprobes for programs built without frame pointers",
    python_requires=">=3.11",
    # The design card's top-level packages stay importable as they are (import unwind, ...).
    packages=["ubt", "unwind", "symbolizer", "debuginfod", "bpf_progs"],
    package_data={"bpf_progs": ["*.c", "*.h"], "ubt": ["py.typed"], "unwind": ["py.typed"],
                  "symbolizer": ["py.typed"], "debuginfod": ["py.typed"]},
    install_requires=["pyelftools>=0.31", "lru-dict>=1.2", "requests>=2.28"],
    extras_require={"test": ["pytest>=7", "mypy>=1.5", "types-requests"]},
    # A plain script, not a console_scripts wrapper: see bin/ubt (Ctrl-C during imports).
    scripts=["bin/ubt"],
)
