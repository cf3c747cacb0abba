"""Do the workflow's job the way a user would by hand: one Python process, no workflow.

Every file is read in full with ``pydicom.dcmread``; a few dozen header values go into a
pandas DataFrame; rows are grouped by SeriesInstanceUID and sorted by InstanceNumber.
Per series, three slices are saved as rescaled ``.npy`` arrays and as PNG thumbnails
(imageio, min/max window), and a 16-tile matplotlib contact sheet is drawn. This is the
baseline that ``run_benchmark.py`` compares the workflow with; it is deliberately plain
(no header-only reads, no spatial sort, no VOI window, no batching).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pydicom  # noqa: E402
from pydicom.errors import InvalidDicomError  # noqa: E402
from pydicom.multival import MultiValue  # noqa: E402

log = logging.getLogger("naive_baseline")

KEYWORDS = (
    "PatientID",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "SOPInstanceUID",
    "SOPClassUID",
    "InstanceNumber",
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "BodyPartExamined",
    "AcquisitionDate",
    "AcquisitionTime",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceLocation",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "KVP",
    "EchoTime",
    "RepetitionTime",
    "MagneticFieldStrength",
)
N_SAVED = 3
N_TILES = 16


def plain(value: object) -> object:
    """A header value as a plain Python value a DataFrame can hold.

    Parameters
    ----------
    value : object
        A pydicom element value (str, DSfloat, IS, MultiValue, ...) or None.

    Returns
    -------
    object
        None, int, float, str, or a tuple of those for multi-valued elements.
    """
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        return tuple(plain(v) for v in value)
    if isinstance(value, int | float):
        return float(value) if isinstance(value, float) else int(value)
    return str(value)


def list_files(study: Path) -> list[Path]:
    """Every regular file under ``study``, sorted by path.

    Parameters
    ----------
    study : Path
        Folder walked recursively.

    Returns
    -------
    list of Path
        Regular files, symlinked folders not followed.
    """
    found = []
    for dirpath, _dirnames, filenames in os.walk(study):
        found.extend(Path(dirpath) / name for name in filenames)
    return sorted(p for p in found if p.is_file())


def read_headers(files: Sequence[Path]) -> pd.DataFrame:
    """Read every file in full and tabulate :data:`KEYWORDS` plus its path.

    Parameters
    ----------
    files : sequence of Path
        Candidate DICOM files; files pydicom rejects are skipped and counted in the log.

    Returns
    -------
    pandas.DataFrame
        One row per readable file with pixel data: ``path`` and one column per keyword.
    """
    rows = []
    skipped = 0
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            skipped += 1
            continue
        if "PixelData" not in ds:
            skipped += 1
            continue
        row = {"path": str(path)}
        row.update({kw: plain(ds.get(kw)) for kw in KEYWORDS})
        rows.append(row)
    if skipped:
        log.info("%d file(s) skipped (not DICOM or no pixel data)", skipped)
    return pd.DataFrame(rows, columns=["path", *KEYWORDS])


def evenly_spaced(n_items: int, count: int) -> list[int]:
    """Up to ``count`` distinct indices spread evenly over ``range(n_items)``.

    Parameters
    ----------
    n_items : int
        Length of the sequence to pick from.
    count : int
        Most indices wanted.

    Returns
    -------
    list of int
        Sorted, distinct indices; all of them when ``n_items <= count``.
    """
    if n_items <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, n_items - 1, min(count, n_items))})


def rescaled_pixels(path: str) -> np.ndarray:
    """Decode a file's image and apply RescaleSlope/Intercept.

    Parameters
    ----------
    path : str
        DICOM file with pixel data.

    Returns
    -------
    (rows, columns) ndarray of float32
        Modality values (HU for CT); colour images are averaged to grey.
    """
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float32)
    if pixels.ndim == 3:
        pixels = pixels.mean(axis=-1) if ds.get("SamplesPerPixel", 1) > 1 else pixels[0]
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return pixels * np.float32(slope) + np.float32(intercept)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Map an image's min..max onto 0..255.

    Parameters
    ----------
    pixels : (rows, columns) ndarray
        Any numeric image; not modified.

    Returns
    -------
    (rows, columns) ndarray of uint8
        Black at the minimum, white at the maximum (all black when flat).
    """
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    return (scaled * 255).round().astype(np.uint8)


def process_series(series: pd.DataFrame, out: Path) -> int:
    """Save three slices (.npy and PNG) and a 16-tile contact sheet for one series.

    Parameters
    ----------
    series : pandas.DataFrame
        Rows of one series from :func:`read_headers`.
    out : Path
        Output folder; ``slices/``, ``thumbnails/`` and ``contact_sheets/`` are made in it.

    Returns
    -------
    int
        Number of slices decoded.
    """
    uid = str(series["SeriesInstanceUID"].iloc[0])
    key = hashlib.sha1(uid.encode()).hexdigest()[:12]
    ordered = series.sort_values("InstanceNumber", kind="stable")
    paths = ordered["path"].tolist()
    saved = [len(paths) * (i + 1) // (N_SAVED + 1) for i in range(N_SAVED)]
    tiles = evenly_spaced(len(paths), N_TILES)
    decoded = {i: rescaled_pixels(paths[i]) for i in sorted(set(saved) | set(tiles))}

    (out / "slices" / key).mkdir(parents=True, exist_ok=True)
    (out / "thumbnails" / key).mkdir(parents=True, exist_ok=True)
    for i in saved:
        np.save(out / "slices" / key / f"slice_{i:04d}.npy", decoded[i])
        iio.imwrite(out / "thumbnails" / key / f"slice_{i:04d}.png", to_uint8(decoded[i]))

    fig, axes = plt.subplots(4, 4, figsize=(8, 8))
    for ax, i in zip(axes.flat, tiles + [None] * (N_TILES - len(tiles)), strict=True):
        ax.axis("off")
        if i is not None:
            ax.imshow(decoded[i], cmap="gray")
            ax.set_title(f"#{i}", fontsize=7)
    fig.suptitle(f"{series['Modality'].iloc[0]} {series['SeriesDescription'].iloc[0]}")
    (out / "contact_sheets").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "contact_sheets" / f"{key}.png", dpi=100)
    plt.close(fig)
    return len(decoded)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, type=Path, help="study folder (read-only)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the naive baseline on a study; returns 0, or 2 when the study has no images."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    files = list_files(args.study)
    table = read_headers(files)
    if table.empty:
        log.error("no DICOM images under %s", args.study)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "instances.csv", index=False)
    decoded = 0
    groups = table.groupby("SeriesInstanceUID", sort=True)
    for _uid, series in groups:
        decoded += process_series(series, args.out)
    log.info("%d files, %d series, %d slices decoded", len(files), groups.ngroups, decoded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
