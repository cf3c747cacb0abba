"""Paths to the bundled real demo study, shared by the tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "resources" / "demo-study"
MR_SERIES = STUDY / "patient01_head_MR" / "20220407_brain" / "003_t1_fl2d_sag"
CT_SERIES = STUDY / "patient02_abdomen_CT" / "20221208_ct_body_3.0"
MISC = STUDY / "misc_samples"
UNSORTED = STUDY / "unsorted"

CT_SMALL = MISC / "ct" / "CT_small.dcm"
MR_RLE = MISC / "mr" / "MR_small_RLE.dcm"
MR_OVERLAY = MISC / "mr" / "examples_overlay.dcm"
NM_JPEG_EXTENDED = MISC / "nm" / "JPGExtended.dcm"
RTDOSE = MISC / "rt" / "rtdose.dcm"
RTPLAN = MISC / "rt" / "rtplan.dcm"
SR = MISC / "sr" / "reportsi.dcm"
ECG = MISC / "ecg" / "waveform_ecg.dcm"
US_JPEG2K = MISC / "us" / "examples_jpeg2k.dcm"
US_PALETTE = MISC / "us" / "examples_palette.dcm"
US_RGB = MISC / "us" / "examples_rgb_color.dcm"
US_YBR_MULTIFRAME = MISC / "us" / "examples_ybr_color.dcm"
MR_TRUNCATED = UNSORTED / "MR_truncated.dcm"
RTPLAN_TRUNCATED = UNSORTED / "rtplan_truncated.dcm"
JPEG_LOSSY = UNSORTED / "JPEG-lossy.dcm"
NO_META = UNSORTED / "no_meta.dcm"
ZIP_MR = UNSORTED / "zipMR.gz"

N_STUDY_FILES = 72
