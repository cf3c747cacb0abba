"""Keep a step's own process from importing packages it never uses.

Start-up is a fixed cost of every job: pyarrow imports pandas on its first array (about
0.9 s), pydicom imports ``requests`` for its test-data downloads (about 0.13 s), and its
pixel plugins import gdcm and Pillow to see whether they are there. Each step script
imports this module first. It blocks only in the process a step script runs as
(``python scripts/<step>.py``), never under pytest or Snakemake, which import the same
modules, and it never blocks what a step uses.
"""

from __future__ import annotations

import os
import sys

UNUSED = ("pandas", "requests", "pillow_heif")
"""Used by no step. (imageio's Pillow plugin tries to import pillow_heif on every file it
opens; blocked, the failed import costs no search of sys.path.)"""
UNUSED_BY_STEP = {"extract_metadata": ("gdcm", "PIL"), "merge_metadata": ("gdcm", "PIL")}
"""Also unused by one step: headers only, no pixel decoding or image files."""


class _Blocked:
    """Import hook under which a blocked package is missing, as if not installed."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"this step does not use {name}", name=name)
        return None


def step_name() -> str | None:
    """The step script this process runs, or None (pytest, Snakemake, an interpreter)."""
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.dirname(script) != os.path.dirname(os.path.abspath(__file__)):
        return None
    return os.path.splitext(os.path.basename(script))[0]


def block_unused() -> None:
    """Install the hook for this process's step (once; nothing outside a step script)."""
    step = step_name()
    if step is None or any(isinstance(f, _Blocked) for f in sys.meta_path):
        return
    names = tuple(n for n in UNUSED + UNUSED_BY_STEP.get(step, ()) if n not in sys.modules)
    sys.meta_path.insert(0, _Blocked(names))


block_unused()
