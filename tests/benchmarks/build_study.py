"""Build a large, realistic study by copying real scanner series with fresh UIDs.

Sources: the real vendor MR series in ``../shared/data/vendor-mr`` (GE, Philips, Toshiba,
Siemens mosaic; large headers with hundreds of private elements), the demo study's MR and
CT series (small headers), or both. Whole series are copied, in a fixed cycle, until the
requested file count is reached; when the next series in the cycle does not fit, the next
one that fits is taken, and the smallest one ends the study. Deterministic: the same size
and source give the same bytes. Half of the files get no extension. When the vendor
folder is missing (a fresh clone), the demo study is used instead, with a warning.
Used by the benchmark and by scale tests; never by the workflow itself.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "resources" / "demo-study"
VENDOR_MR = ROOT.parent / "shared" / "data" / "vendor-mr"
#: Vendor label and folder under :data:`VENDOR_MR` of each real vendor series.
VENDOR_SERIES = (
    ("GE", "GE_SIGNA_Pioneer_3D_T1"),
    ("Philips", "Philips_Achieva_DTI"),
    ("Toshiba", "Toshiba_Galan_DTI_b0"),
    ("Siemens", "Siemens_mosaic_DWI"),
)
#: The demo study's real image series used as templates (Siemens MR, JPEG 2000 CT).
DEMO_SERIES = (
    DEMO / "patient01_head_MR" / "20220407_brain" / "003_t1_fl2d_sag",
    DEMO / "patient02_abdomen_CT" / "20221208_ct_body_3.0",
)
SOURCES = ("vendor", "demo", "mixed")
#: Vendor of the series added to a finished study to time an incremental rerun.
INCREMENT_VENDOR = "Toshiba"

log = logging.getLogger("build_study")


@dataclass(frozen=True)
class Template:
    """A real series copied into built studies.

    Attributes
    ----------
    vendor : str
        ``GE``, ``Philips``, ``Toshiba``, ``Siemens`` or ``demo``.
    folder : Path
        Folder holding the series' files (and nothing else).
    """

    vendor: str
    folder: Path

    def files(self) -> list[Path]:
        """The series' files, sorted by name."""
        return sorted(p for p in self.folder.iterdir() if p.is_file())


def derived_uid(*parts: object) -> str:
    """A valid, deterministic UID under the 2.25 (UUID-derived) root."""
    digest = hashlib.sha1("|".join(str(p) for p in parts).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def vendor_templates(vendor_root: Path | None = None) -> list[Template]:
    """The vendor series present under ``vendor_root``, in :data:`VENDOR_SERIES` order."""
    vendor_root = VENDOR_MR if vendor_root is None else vendor_root
    found = [Template(vendor, vendor_root / name) for vendor, name in VENDOR_SERIES]
    return [t for t in found if t.folder.is_dir()]


def demo_templates() -> list[Template]:
    """The demo study's MR and CT series."""
    return [Template("demo", folder) for folder in DEMO_SERIES]


def resolve_source(source: str, vendor_root: Path | None = None) -> str:
    """The source actually used: ``demo`` (with a warning) when vendor series are missing.

    Parameters
    ----------
    source : str
        One of :data:`SOURCES`.
    vendor_root : Path, optional
        Folder holding the vendor series (default :data:`VENDOR_MR`).

    Returns
    -------
    str
        ``source``, or ``demo`` when ``source`` needs vendor series and any is missing.
    """
    if source not in SOURCES:
        raise ValueError(f"Argument 'source' must be one of {SOURCES}, got {source!r}")
    if source == "demo":
        return source
    present = {t.vendor for t in vendor_templates(vendor_root)}
    missing = [name for vendor, name in VENDOR_SERIES if vendor not in present]
    if missing:
        log.warning(
            "vendor series missing under %s (%s): building from the demo study instead",
            VENDOR_MR if vendor_root is None else vendor_root,
            ", ".join(missing),
        )
        return "demo"
    return source


def templates(source: str, vendor_root: Path | None = None) -> list[Template]:
    """The series a study of ``source`` is built from (see :func:`resolve_source`)."""
    source = resolve_source(source, vendor_root)
    vendor = vendor_templates(vendor_root) if source != "demo" else []
    demo = demo_templates() if source != "vendor" else []
    return vendor + demo


def plan(series_sizes: Sequence[int], n_files: int) -> list[int]:
    """Which template each copy is made from, in order, to reach ``n_files`` files.

    Templates are taken in a cycle; one that would overshoot is skipped for the next one
    that fits, and when none fits the smallest one ends the plan.

    Parameters
    ----------
    series_sizes : sequence of int
        File count of each template, all >= 1.
    n_files : int
        Files wanted; the plan holds at least this many (whole series only).

    Returns
    -------
    list of int
        Template indices, one per copy.
    """
    if not series_sizes or min(series_sizes) < 1:
        raise ValueError(f"Argument 'series_sizes' must be counts >= 1, got {series_sizes}")
    order: list[int] = []
    written, start = 0, 0
    count = len(series_sizes)
    while written < n_files:
        remaining = n_files - written
        fitting = [(start + s) % count for s in range(count)]
        fitting = [k for k in fitting if series_sizes[k] <= remaining]
        k = fitting[0] if fitting else min(range(count), key=lambda j: (series_sizes[j], j))
        order.append(k)
        written += series_sizes[k]
        start = k + 1
    return order


def composition(n_files: int, source: str, vendor_root: Path | None = None) -> dict[str, int]:
    """Files per vendor in a study of ``n_files`` built from ``source``, without writing."""
    chosen = templates(source, vendor_root)
    sizes = [len(t.files()) for t in chosen]
    counts: Counter[str] = Counter()
    for k in plan(sizes, n_files):
        counts[chosen[k].vendor] += sizes[k]
    return dict(counts)


def write_series(
    datasets: Sequence[pydicom.Dataset],
    folder: Path,
    seed: int,
    study_uid: str,
    patient_id: str,
    series_number: int,
) -> int:
    """Write one copy of a series with fresh, deterministic UIDs; returns files written.

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        The template series in file-name order; changed in place (UIDs, IDs).
    folder : Path
        New folder for the copy.
    seed : int
        Distinct per copy: derives the series and instance UIDs and which files get
        a ``.dcm`` extension.
    study_uid, patient_id : str
        StudyInstanceUID and PatientID of the copy.
    series_number : int
        SeriesNumber of the copy.

    Returns
    -------
    int
        Number of files written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = derived_uid("series", seed)
    for i, ds in enumerate(datasets):
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = derived_uid("instance", seed, i)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber = series_number
        ds.PatientID = patient_id
        name = f"IM_{i + 1:04d}" + (".dcm" if (seed + i) % 2 else "")
        ds.save_as(folder / name, enforce_file_format=False)
    return len(datasets)


def build(
    out: Path,
    n_files: int,
    source: str = "vendor",
    series_per_study: int = 4,
    vendor_root: Path | None = None,
) -> int:
    """Write about ``n_files`` files (whole series only) under ``out``; returns files written.

    Parameters
    ----------
    out : Path
        Study folder; ``subject_<n>/series_<m>/IM_<k>[.dcm]`` are written in it.
    n_files : int
        Files wanted (see :func:`plan`).
    source : str
        ``vendor``, ``demo`` or ``mixed`` (see :func:`resolve_source`).
    series_per_study : int
        Copies grouped under one subject and StudyInstanceUID.
    vendor_root : Path, optional
        Folder holding the vendor series (default :data:`VENDOR_MR`).

    Returns
    -------
    int
        Files written.
    """
    chosen = templates(source, vendor_root)
    files = [t.files() for t in chosen]
    loaded: dict[int, list[pydicom.Dataset]] = {}
    written = 0
    for copy, k in enumerate(plan([len(f) for f in files], n_files)):
        if k not in loaded:
            loaded[k] = [pydicom.dcmread(p) for p in files[k]]
        study_no, series_no = divmod(copy, series_per_study)
        folder = out / f"subject_{study_no:05d}" / f"series_{series_no:02d}"
        study_uid = derived_uid("study", study_no)
        written += write_series(
            loaded[k], folder, copy, study_uid, f"SUBJ{study_no:05d}", series_no + 1
        )
    return written


def add_series(study: Path, source: str = "vendor", vendor_root: Path | None = None) -> Path:
    """Add one new series folder to a built study (a fresh-UID copy of the Toshiba series).

    The demo MR series is copied instead when the source is ``demo`` (or falls back to it).

    Parameters
    ----------
    study : Path
        A study made by :func:`build`.
    source : str
        The source the study was built from.
    vendor_root : Path, optional
        Folder holding the vendor series (default :data:`VENDOR_MR`).

    Returns
    -------
    Path
        The new folder, ``<study>/subject_added/series_<n>``, numbered past existing ones.
    """
    chosen = templates(source, vendor_root)
    template = next((t for t in chosen if t.vendor == INCREMENT_VENDOR), chosen[0])
    parent = study / "subject_added"
    number = len(list(parent.iterdir())) if parent.is_dir() else 0
    folder = parent / f"series_{number:02d}"
    datasets = [pydicom.dcmread(p) for p in template.files()]
    write_series(
        datasets, folder, 10**9 + number, derived_uid("study", "added"), "SUBJADDED", number + 1
    )
    return folder


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="new study folder")
    parser.add_argument("--files", required=True, type=int, help="about this many files")
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="vendor",
        help="real vendor MR series, the demo study's series, or both (default: vendor)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the study; refuses to write into a folder that already has files."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.out.exists() and any(args.out.iterdir()):
        log.error("%s is not empty", args.out)
        return 2
    n = build(args.out, args.files, args.source)
    log.info("%d files written to %s (%s)", n, args.out, composition(args.files, args.source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
