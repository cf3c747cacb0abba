# Config checks, paths and input functions; no rules here.
import os
import sys
from pathlib import Path

import yaml
from snakemake.utils import update_config, validate

SCRIPTS = Path(workflow.basedir) / "scripts"
SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
sys.path.insert(0, str(SCRIPTS))

import privacy  # noqa: E402 - these four live in scripts/
import ratings  # noqa: E402
import scan_study  # noqa: E402
import workflow_config  # noqa: E402

DEFAULTS = Path(workflow.basedir) / "config" / "config.yaml"
with open(DEFAULTS, encoding="utf-8") as _fh:
    _config = yaml.safe_load(_fh) or {}
update_config(_config, dict(config))  # what the user gave wins, key by key
config.clear()
config.update(_config)

_problem = workflow_config.schema_problem(config, SCHEMA)
if _problem is None:
    validate(config, schema=str(SCHEMA))  # fills defaults
    _problem = workflow_config.paths_problem(config["study"], config["results"])
if _problem:
    sys.exit(f"dicom-study-pipeline: {_problem}")

STUDY = config["study"]
RESULTS = config["results"]

# A malformed ratings CSV stops the run before any job, with one line naming file and row.
RATINGS = config["review"]["ratings"]
if RATINGS:
    try:
        ratings.read_ratings(RATINGS)
    except ratings.RatingsError as _exc:
        sys.exit(f"dicom-study-pipeline: {_exc}")

if config["privacy"]["mode"] == "pseudonymize":
    # The key reaches jobs through their environment only: never a parameter, log or output.
    if config["privacy"]["key"]:
        os.environ[privacy.KEY_ENV] = config["privacy"]["key"]
    if not os.environ.get(privacy.KEY_ENV):
        sys.exit(
            "dicom-study-pipeline: privacy mode 'pseudonymize' needs a key: set "
            f"{privacy.KEY_ENV} (or config key privacy.key)"
        )

# The study is scanned while the DAG is built, not in a job: shard lists are rewritten
# only when their files changed, so a rerun re-extracts only changed shards. Jobs
# running elsewhere (cluster nodes) only read the lists the main process wrote.
if workflow.is_main_process:
    try:
        SHARDS = scan_study.scan(
            Path(STUDY),
            Path(RESULTS) / "_work" / "scan",
            config["scan"]["files_per_shard"],
        )
    except OSError as exc:
        sys.exit(
            f"dicom-study-pipeline: cannot write the scan to {RESULTS}: {exc.strerror}"
        )
    if not SHARDS:
        sys.exit(f"dicom-study-pipeline: study folder has no files: {STUDY}")
else:
    SHARDS = sorted(
        glob_wildcards(
            os.path.join(RESULTS, "_work", "scan", "shard_{shard}.jsonl")
        ).shard
    )


wildcard_constraints:
    shard=r"\d{4}",
    batch=r"\d+",


def res(path):
    """A path under the results folder."""
    return os.path.join(RESULTS, path)


def results_root(wildcards, output):
    """The results folder, derived from a job's first output (which lies under ``_work/``)."""
    path = Path(output[0])
    return str(path.parents[len(path.relative_to(RESULTS).parts) - 1])


def shard_priority(wildcards):
    """An extract job's priority: the number of files in its shard list."""
    with open(res(f"_work/scan/shard_{wildcards.shard}.jsonl"), "rb") as fh:
        return sum(1 for line in fh if line.strip())


def script(name):
    """Path of a step's script, so that editing the script re-runs its rule."""
    return str(SCRIPTS / f"{name}.py")


def keyword_args():
    """--keyword options for the extra metadata keywords from the config."""
    return " ".join(f"--keyword {k}" for k in config["metadata"]["keywords"])


def selection_args():
    """--count, --fractions and --planes options for save_slices."""
    slices = config["slices"]
    args = f"--count {slices['count']} --planes {' '.join(slices['planes'])}"
    if slices["fractions"]:
        args += " --fractions " + " ".join(str(f) for f in slices["fractions"])
    return args


def volume_args():
    """--volumes-format and --volumes-modality options for save_slices (none: volumes off)."""
    volumes = config["volumes"]
    if not volumes["format"]:
        return ""
    args = "--volumes-format " + " ".join(volumes["format"])
    if volumes["modalities"]:
        args += " --volumes-modality " + " ".join(
            f"'{m}'" for m in volumes["modalities"]
        )
    return args


def ct_window_args():
    """--ct-window option when a CT window preset is configured."""
    window = config["thumbnails"]["ct_window"]
    return "" if window is None else f"--ct-window {window[0]} {window[1]}"


def shard_lists():
    """Every shard list of the scan (the merge reads each file's stamp from them)."""
    return [res(f"_work/scan/shard_{s}.jsonl") for s in SHARDS]


def extract_parts(kind):
    """Every shard's instances or errors table."""
    return [res(f"_work/extract/shard_{s}.{kind}.parquet") for s in SHARDS]


def batches():
    """Batch ids of series with pixels, known once the merge checkpoint has run."""
    import pyarrow.parquet as pq

    series = checkpoints.merge_metadata.get().output.series
    column = pq.read_table(series, columns=["batch"]).column("batch").drop_null()
    return sorted(set(column.to_pylist()))


def batch_parts(pattern):
    """Input function: ``pattern`` formatted for every batch."""

    def parts(wildcards):
        return [res(pattern.format(batch=b)) for b in batches()]

    return parts


def error_parts(wildcards):
    """Header errors from the merge plus decoding errors of every slice batch."""
    return [res("_work/errors_extract.parquet")] + batch_parts(
        "_work/slices/batch_{batch}.errors.parquet"
    )(wildcards)


def ratings_input():
    """The ratings CSV of ``review.ratings`` as a list (empty when none is given)."""
    return [RATINGS] if RATINGS else []


def final_outputs():
    """What `snakemake` builds by default."""
    return [
        res("metadata/instances.parquet"),
        res("metadata/series.parquet"),
        res("metadata/errors.parquet"),
        res("metadata/slices.parquet"),
        res("metadata/volumes.parquet"),
        res("index.html"),
    ]


def cancel_pending_timers():
    """Cancel the threading timers left when the run is over.

    Snakemake's scheduler arms a 1 s timer (its job-rate limit, 100 jobs a second by
    default) after every pass, and Python waits for such timers before it exits: about
    1.7 s after the last job of every run. Only those timers are pending by then, and
    they would only wake a scheduler that has finished.
    """
    import threading

    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()
