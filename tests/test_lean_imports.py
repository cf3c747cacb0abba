"""Tests for scripts/lean_imports.py: unused packages stay out of a step's own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import demo

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
WATCHED = ("pandas", "requests", "gdcm", "PIL")

PROBE = """
import json, sys
sys.argv = [sys.argv[1]]
import lean_imports
import pydicom, pyarrow as pa
pa.array([1])  # pyarrow looks for pandas on its first array
ds = pydicom.dcmread({path!r}, stop_before_pixels=True)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({watched!r}))
print(json.dumps({{"loaded": loaded, "modality": ds.Modality}}))
"""


def run_python(code: str, *args: str) -> dict:
    """The JSON that ``python -c code args`` prints, with scripts/ importable."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={"PYTHONPATH": str(SCRIPTS), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def probe(argv0: str) -> dict:
    """Modules loaded by a process that believes it runs ``argv0`` and reads a demo file."""
    return run_python(PROBE.format(path=str(demo.CT_SMALL), watched=WATCHED), argv0)


@pytest.mark.parametrize(
    ("step", "absent"),
    [
        ("extract_metadata", {"pandas", "requests", "gdcm", "PIL"}),
        ("merge_metadata", {"pandas", "requests", "gdcm", "PIL"}),
        ("save_slices", {"pandas", "requests"}),
    ],
)
def test_a_step_process_does_without_what_it_never_uses(step, absent):
    found = probe(str(SCRIPTS / f"{step}.py"))
    assert found["modality"] == "CT"  # pydicom still reads the header
    assert not absent & set(found["loaded"])


def test_save_slices_keeps_the_pixel_plugins_it_decodes_with():
    found = probe(str(SCRIPTS / "save_slices.py"))
    assert {"gdcm", "PIL"} <= set(found["loaded"])


def test_nothing_is_blocked_outside_a_step_script():
    found = probe(str(Path(sys.executable)))  # e.g. pytest or snakemake importing scripts/
    assert {"pandas", "requests", "gdcm", "PIL"} <= set(found["loaded"])


def test_the_sheets_step_reads_pngs_with_imageio_without_searching_for_pillow_heif(tmp_path):
    code = f"""
import json, sys
sys.argv = [{str(SCRIPTS / "make_contact_sheets.py")!r}]
import lean_imports
import numpy as np
import make_contact_sheets, rendering
rendering.write_png(np.arange(48, dtype=np.uint8).reshape(6, 8), {str(tmp_path / "t.png")!r})
pixels = make_contact_sheets.read_thumbnail({str(tmp_path / "t.png")!r})
try:
    import pillow_heif
    why = "imported"
except ImportError as exc:
    why = str(exc)
print(json.dumps({{"sum": int(pixels.sum()), "why": why}}))
"""
    found = run_python(code)
    assert found["sum"] == sum(range(48))
    assert found["why"] == "this step does not use pillow_heif"
