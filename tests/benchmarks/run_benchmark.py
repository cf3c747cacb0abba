"""Benchmark the workflow against a naive script and a plain pydicom loop, at several sizes.

For each size in ``--sizes`` a study is built with :func:`build_study.build` from real
scanner series (``--source vendor``: the GE, Philips, Toshiba and Siemens series in
``../shared/data/vendor-mr``; ``demo``: the demo study's MR and CT; ``mixed``: both; fresh
UIDs, deterministic, reused when already built; a missing vendor folder falls back to the
demo). On it, one after another with warm file caches, are timed: reading every file's
bytes (``cat``, also warming the caches), the plain pydicom loop (``pydicom_loop.py``:
``dcmread(stop_before_pixels=True)`` of every file, one process, no outputs), the naive
script (``naive_baseline.py``), the metadata stages (scan + extract + merge, target
``results/metadata/instances.parquet``) in a fresh folder, and the whole workflow in a
fresh folder. After the whole run, one new series folder (a fresh-UID copy of the
Toshiba series) is added and the rerun timed (``add-series``, as % of the full run), then
a rerun with nothing changed (``no-change``, which must run 0 jobs).

Per vendor, on up to ``--profile-files`` files of each real series (GE, Philips,
Toshiba, Siemens, demo), ``file_costs.py`` times in ms per file: pydicom's header-only
read, our metadata extraction of one file (``extract_metadata.extract_file``: reading,
typed columns and DICOM JSON), and the reference JSON
(``dicom_json.header_json(dicom_io.read_header(path).dataset)``); each pass in a fresh
process (per-process memos start empty, as in an extract job), the best of
``--profile-repeats`` passes.

``--dry-run-sizes`` times ``snakemake -n`` on hard-linked replicas of a built study in a
fresh folder (the study is scanned while the DAG is built, so this plans every extract
shard); ``--metadata-only-sizes`` runs only scan + extract + merge on a real study of
that size and then times a dry run of the rest with the checkpoints resolved.

Wall time is measured around each command. Peak RSS is measured for the whole process
tree: a thread reads ``/proc/<pid>/stat`` of every process every ``--sample-interval``
seconds and sums the RSS of the command's descendants; the result is floored by the
kernel's exact ``ru_maxrss`` from ``os.wait4`` (which is only the largest single process
of the tree, not a sum). Summed RSS counts shared pages (libraries) once per process, so
it overstates a little; sampling can miss spikes shorter than the interval.

Jobs and their summed run time come from Snakemake's benchmark TSV files under
``results/benchmarks/`` (one per job, rewritten when the job runs; ``rule all`` has
none). Snakemake's overhead is ``wall - summed job seconds / cores``; it includes cores
left idle by serial parts of the DAG (scan -> extract -> merge), so it is an upper bound
on Snakemake's own cost.

Prints the vendor table and the stage table and writes them to ``<out-dir>/benchmark.md``
(with a line naming the machine and commit, and these notes), ``<out-dir>/benchmark.tsv``
and ``<out-dir>/vendors.tsv``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import build_study

log = logging.getLogger("run_benchmark")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRIPTS = ROOT / "scripts"
SNAKEFILE = ROOT / "Snakefile"
CONFIG = ROOT / "config" / "config.yaml"
NAIVE = HERE / "naive_baseline.py"
PYDICOM_LOOP = HERE / "pydicom_loop.py"
FILE_COSTS = HERE / "file_costs.py"
METADATA_TARGET = "results/metadata/instances.parquet"

COLUMNS = (
    "size",
    "stage",
    "wall_s",
    "files_per_s",
    "peak_rss_mib",
    "jobs",
    "overhead_s",
    "overhead_pct",
    "ratio_vs_naive",
    "ratio_vs_pydicom",
    "pct_of_full",
)
#: Stages whose files/s are compared with the two baselines of the same size.
RATED_STAGES = ("read-bytes", "pydicom-loop", "naive", "metadata", "workflow")
VENDOR_COLUMNS = (
    "vendor",
    "files",
    "file_kib",
    "elements",
    "json_kib",
    "pydicom_read_ms",
    "extract_ms",
    "reference_json_ms",
)
MIB = 1024 * 1024
#: Free space kept back when checking whether a study fits on the disk.
DISK_RESERVE = 2 * 1024**3
#: Rough cost of one hard link (directory entry) and one folder when replicating a study.
LINK_BYTES = 256
FOLDER_BYTES = 4096


class NotEnoughDisk(Exception):
    """A study would not fit on the disk; the message says how much is needed and free."""


@dataclass(frozen=True)
class Measurement:
    """Wall time and memory of one command run.

    Attributes
    ----------
    wall_s : float
        Seconds from start to exit.
    tree_rss_mib : float
        Peak of the sampled sum of RSS over the command's process tree, MiB.
    max_process_rss_mib : float
        Largest RSS of any single process in the tree (kernel ``ru_maxrss``), MiB.
    returncode : int
        Exit status (negative: killed by that signal).
    started_at : float
        Start as a Unix time (for comparing with file modification times).
    """

    wall_s: float
    tree_rss_mib: float
    max_process_rss_mib: float
    returncode: int
    started_at: float = 0.0

    @property
    def peak_rss_mib(self) -> float:
        """Best estimate of the tree's peak RSS: sampled sum, at least the exact largest."""
        return max(self.tree_rss_mib, self.max_process_rss_mib)


@dataclass(frozen=True)
class Row:
    """One line of the stage table; None shows as ``-`` (empty in the TSV)."""

    size: int
    stage: str
    wall_s: float
    files_per_s: float | None = None
    peak_rss_mib: float | None = None
    jobs: int | None = None
    overhead_s: float | None = None
    overhead_pct: float | None = None
    ratio_vs_naive: float | None = None
    ratio_vs_pydicom: float | None = None
    pct_of_full: float | None = None


@dataclass(frozen=True)
class VendorRow:
    """Per-file costs on one vendor's real series (means over the files timed).

    Attributes
    ----------
    vendor : str
        ``GE``, ``Philips``, ``Toshiba``, ``Siemens`` or ``demo``.
    files : int
        Files timed.
    file_kib : float
        Mean file size, KiB.
    elements : float
        Mean number of data elements in a header (nested ones included).
    json_kib : float
        Mean size of the reference DICOM JSON, KiB.
    pydicom_read_ms : float
        ``pydicom.dcmread(path, stop_before_pixels=True)``, ms per file.
    extract_ms : float
        ``extract_metadata.extract_file`` (read, typed columns, DICOM JSON), ms per file.
    reference_json_ms : float
        ``dicom_json.header_json(dicom_io.read_header(path).dataset)``, ms per file.
    """

    vendor: str
    files: int
    file_kib: float
    elements: float
    json_kib: float
    pydicom_read_ms: float
    extract_ms: float
    reference_json_ms: float


# --- measuring a process tree ----------------------------------------------------------


def read_proc_table(proc: Path = Path("/proc")) -> dict[int, tuple[int, int]]:
    """Parent pid and resident pages of every process, from ``/proc/<pid>/stat``.

    Parameters
    ----------
    proc : Path
        The proc file system root.

    Returns
    -------
    dict of int to (int, int)
        ``pid -> (ppid, rss_pages)``; processes that exit while being read are left out.
    """
    table = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "stat"), "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 21:
            table[int(entry.name)] = (int(fields[1]), int(fields[21]))
    return table


def tree_rss_pages(table: dict[int, tuple[int, int]], root: int, include_root: bool = True) -> int:
    """Summed resident pages of ``root`` and all its descendants.

    Parameters
    ----------
    table : dict of int to (int, int)
        ``pid -> (ppid, rss_pages)`` as from :func:`read_proc_table`.
    root : int
        Pid at the top of the tree.
    include_root : bool
        Count ``root``'s own pages (False: only its descendants').

    Returns
    -------
    int
        Sum of RSS pages over the tree; 0 when ``root`` is not in the table.
    """
    children: dict[int, list[int]] = {}
    for pid, (ppid, _rss) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        if pid in table and (include_root or pid != root):
            total += table[pid][1]
        stack.extend(children.get(pid, ()))
    return total


class TreeRssSampler(threading.Thread):
    """Background thread recording the peak summed RSS of a process tree.

    Parameters
    ----------
    root : int
        Pid at the top of the tree.
    interval : float
        Seconds between samples.
    include_root : bool
        Count the root's own memory (False: only its descendants', e.g. under a
        trampoline).
    """

    def __init__(self, root: int, interval: float, include_root: bool = True):
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.include_root = include_root
        self.peak_bytes = 0
        self._stop_event = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.available = Path("/proc/self/stat").exists()

    def run(self) -> None:  # noqa: D102 - threading.Thread API
        while self.available and not self._stop_event.is_set():
            pages = tree_rss_pages(read_proc_table(), self.root, self.include_root)
            rss = pages * self._page
            self.peak_bytes = max(self.peak_bytes, rss)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        """Stop sampling and wait for the thread to end."""
        self._stop_event.set()
        self.join()


#: Runs the command in a small process of its own and reports that process's exit status,
#: wall time and ``ru_maxrss``. Linux counts the memory a process had before ``exec``
#: (a copy of its parent's) in its ``ru_maxrss``, so a command forked straight from this
#: process would report at least this process's own peak; forked from a bare Python it
#: carries only that Python's few MiB.
TRAMPOLINE = """\
import json, os, sys, time
report, cmd = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(report, "w") as fh:
    json.dump({"status": status, "maxrss": usage.ru_maxrss, "wall_s": wall}, fh)
"""


def run_measured(
    cmd: Sequence[str],
    cwd: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    interval: float = 0.1,
) -> Measurement:
    """Run a command, capturing its output in a file, and measure time and memory.

    The command runs under :data:`TRAMPOLINE`, which times it and reads its exact
    ``ru_maxrss``; the sampled tree leaves the trampoline's own memory out.

    Parameters
    ----------
    cmd : sequence of str
        Program and arguments.
    cwd : Path
        Working folder.
    log_path : Path
        File receiving the command's stdout and stderr.
    env : dict of str to str, optional
        Environment; the current one when None.
    interval : float
        Seconds between RSS samples of the process tree.

    Returns
    -------
    Measurement
        Wall time, sampled tree RSS peak, exact largest single-process RSS, exit status.
    """
    report_path = log_path.with_name(log_path.name + ".rusage.json")
    report_path.unlink(missing_ok=True)
    wrapped = [sys.executable, "-S", "-c", TRAMPOLINE, str(report_path), *cmd]
    with open(log_path, "wb") as out:
        started_at = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeRssSampler(proc.pid, interval, include_root=False)
        sampler.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            sampler.stop()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    maxrss = usage.ru_maxrss
    if report_path.exists():  # else the trampoline itself failed: report what it did
        report = json.loads(report_path.read_text())
        proc.returncode = os.waitstatus_to_exitcode(report["status"])
        maxrss, wall = report["maxrss"], report["wall_s"]
    # ru_maxrss is KiB on Linux (bytes on macOS); it covers the child and the
    # descendants it waited for, as the maximum of single processes.
    scale = 1 if sys.platform == "darwin" else 1024
    return Measurement(
        wall_s=wall,
        tree_rss_mib=sampler.peak_bytes / MIB,
        max_process_rss_mib=maxrss * scale / MIB,
        returncode=proc.returncode,
        started_at=started_at,
    )


# --- studies ----------------------------------------------------------------------------


def count_files(folder: Path) -> int:
    """Number of regular files under ``folder`` (recursively, symlinks not followed)."""
    return sum(len(names) for _d, _s, names in os.walk(folder))


def builder_fingerprint() -> str:
    """Hash of the study builder's source, so a changed builder invalidates built studies."""
    return hashlib.sha1(Path(build_study.__file__).read_bytes()).hexdigest()[:12]


def estimated_study_bytes(n_files: int, source: str) -> float:
    """Bytes a study of ``n_files`` built from ``source`` takes (from its template series)."""
    chosen = build_study.templates(source)
    series_bytes = [sum(p.stat().st_size for p in t.files()) for t in chosen]
    order = build_study.plan([len(t.files()) for t in chosen], n_files)
    return float(sum(series_bytes[k] for k in order))


def disk_problem(folder: Path, need_bytes: float, need_inodes: int = 0) -> str | None:
    """Why ``need_bytes`` and ``need_inodes`` do not fit under ``folder``, or None.

    Parameters
    ----------
    folder : Path
        Where the data would go (its nearest existing parent is checked).
    need_bytes : float
        Bytes to be written; :data:`DISK_RESERVE` more is kept free.
    need_inodes : int
        Inodes (files and folders) to be created.

    Returns
    -------
    str or None
        A one-line reason, or None when there is room.
    """
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need_bytes + DISK_RESERVE > free:
        return (
            f"needs about {need_bytes / 1024**3:.1f} GiB (+{DISK_RESERVE / 1024**3:.0f} GiB"
            f" reserve) under {probe}, {free / 1024**3:.1f} GiB free"
        )
    if need_inodes and hasattr(os, "statvfs"):
        stat = os.statvfs(probe)
        if stat.f_files and need_inodes > stat.f_favail:
            return f"needs {need_inodes} inodes under {probe}, {stat.f_favail} free"
    return None


def ensure_study(work: Path, n_files: int, source: str = "vendor") -> tuple[Path, int]:
    """Build (or reuse) a study of about ``n_files`` real files under ``work/studies``.

    Parameters
    ----------
    work : Path
        Benchmark work folder.
    n_files : int
        Files requested; :func:`build_study.build` writes whole series, so a few more.
    source : str
        ``vendor``, ``demo`` or ``mixed``; ``vendor`` and ``mixed`` fall back to
        ``demo`` (with a warning) when the vendor series are missing.

    Returns
    -------
    (Path, int)
        The study folder (``studies/<source>_<n_files>``) and its file count.

    Raises
    ------
    NotEnoughDisk
        When the study would not fit (checked before writing anything).
    """
    source = build_study.resolve_source(source)
    study = work / "studies" / f"{source}_{n_files}"
    marker = study.with_name(study.name + ".json")
    stamp = {
        "requested": n_files,
        "source": source,
        "vendor_root": str(build_study.VENDOR_MR) if source != "demo" else None,
        "builder": builder_fingerprint(),
    }
    if marker.exists() and study.is_dir():
        done = json.loads(marker.read_text())
        same = {k: done.get(k) for k in stamp} == stamp
        if same and count_files(study) == done.get("files"):
            log.info("reusing %s (%d files: %s)", study, done["files"], done.get("vendors"))
            return study, done["files"]
    problem = disk_problem(work, estimated_study_bytes(n_files, source) * 1.05, n_files)
    if problem:
        raise NotEnoughDisk(f"{n_files}-file study: {problem}")
    if study.exists():
        shutil.rmtree(study)
    marker.unlink(missing_ok=True)
    log.info("building a %d-file study from %s series in %s", n_files, source, study)
    start = time.perf_counter()
    written = build_study.build(study, n_files, source)
    vendors = build_study.composition(n_files, source)
    log.info("built %d files (%s) in %.1f s", written, vendors, time.perf_counter() - start)
    marker.write_text(json.dumps({**stamp, "files": written, "vendors": vendors}, indent=1) + "\n")
    return study, written


def link_tree(source: Path, target: Path) -> Path:
    """A fresh mirror of ``source`` at ``target`` made of hard links (symlinks across devices).

    Lets a run add files to a study without touching the built one; the linked files
    share the originals' size and modification time.
    """
    fresh_folder(target)
    for dirpath, _dirnames, filenames in os.walk(source):
        folder = target / Path(dirpath).relative_to(source)
        folder.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            link_or_symlink(Path(dirpath, name).resolve(), folder / name)
    return target


def link_or_symlink(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target``; fall back to a symlink across file systems."""
    try:
        os.link(source, target)
    except OSError:
        os.symlink(source, target)


def ensure_linked_study(base: Path, work: Path, n_files: int) -> Path:
    """A study of exactly ``n_files`` files hard-linked from ``base``, replicated in folders.

    UIDs repeat across replicas, which does not matter for a dry run: it stops at the
    DAG-time scan. Reused when already made from the same base.

    Parameters
    ----------
    base : Path
        A built study whose files are linked.
    work : Path
        Benchmark work folder; the study goes to ``work/studies/linked_<n_files>``.
    n_files : int
        Exact number of files wanted.

    Returns
    -------
    Path
        The study folder.

    Raises
    ------
    NotEnoughDisk
        When the links and folders would not fit (checked before writing anything).
    """
    study = work / "studies" / f"linked_{n_files}"
    marker = study.with_name(study.name + ".json")
    stamp = {"base": str(base.resolve()), "files": n_files}
    if marker.exists() and study.is_dir() and json.loads(marker.read_text()) == stamp:
        log.info("reusing %s", study)
        return study
    sources = sorted(p.relative_to(base) for p in base.rglob("*") if p.is_file())
    if not sources:
        raise ValueError(f"Argument 'base' must be a folder with files, got {base}")
    folders_per_copy = len({p.parent for p in sources}) + 1
    copies = -(-n_files // len(sources))
    need = n_files * LINK_BYTES + copies * folders_per_copy * FOLDER_BYTES
    problem = disk_problem(work, need, copies * folders_per_copy)
    if problem:
        raise NotEnoughDisk(f"{n_files}-file linked study: {problem}")
    if study.exists():
        shutil.rmtree(study)
    marker.unlink(missing_ok=True)
    log.info("linking a %d-file study from %s into %s", n_files, base, study)
    made = 0
    for copy in range(copies):
        for rel in sources:
            if made == n_files:
                break
            target = study / f"replica_{copy:04d}" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_symlink((base / rel).resolve(), target)
            made += 1
    marker.write_text(json.dumps(stamp, indent=1) + "\n")
    return study


# --- running snakemake and the baseline ---------------------------------------------------


def tool_env() -> dict[str, str]:
    """The environment with this interpreter's bin folder first (rules call ``python``)."""
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def snakemake_cmd(study: Path, cores: int, *extra: str) -> list[str]:
    """The ``snakemake`` command line for a study, results going to ``./results``."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--configfile", str(CONFIG)]
    cmd += ["--cores", str(cores), *extra]
    return cmd + ["--config", f"study={study.resolve()}", "results=results"]


def fresh_folder(folder: Path) -> Path:
    """Empty ``folder`` (removing what it held) and return it."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def job_benchmarks(results: Path, since: float | None = None) -> tuple[int, float]:
    """Jobs run and their summed seconds, from Snakemake's benchmark TSV files.

    Parameters
    ----------
    results : Path
        The workflow's results folder; ``benchmarks/**/*.tsv`` holds one file per job.
    since : float, optional
        Unix time; when given, only files written at or after it count (the jobs of a
        rerun: a job's benchmark file is rewritten when the job runs).

    Returns
    -------
    (int, float)
        Number of benchmark files and the sum of their ``s`` column (all repeats).
    """
    jobs, seconds = 0, 0.0
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        if since is not None and path.stat().st_mtime < since:
            continue
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        jobs += 1
        seconds += sum(float(r["s"]) for r in rows)
    return jobs, seconds


def idle_seconds(results: Path, started_at: float, wall_s: float) -> float:
    """Seconds of a run during which no job ran, from benchmark files' times.

    A job's benchmark file is written when it ends, so the job ran over
    ``[mtime - s, mtime]``; the rest of the run is Snakemake alone (start-up, DAG
    building, checkpoint re-evaluation, scheduling gaps).

    Parameters
    ----------
    results : Path
        The workflow's results folder.
    started_at : float
        Unix time the run started.
    wall_s : float
        Wall time of the run.

    Returns
    -------
    float
        ``wall_s`` minus the length of the union of the jobs' intervals.
    """
    end = started_at + wall_s
    spans = []
    for path in (results / "benchmarks").rglob("*.tsv"):
        with open(path, newline="") as fh:
            seconds = sum(float(r["s"]) for r in csv.DictReader(fh, delimiter="\t"))
        stop = min(path.stat().st_mtime, end)
        spans.append((max(stop - seconds, started_at), stop))
    busy, reach = 0.0, started_at
    for lo, hi in sorted(spans):
        if hi > reach:
            busy += hi - max(lo, reach)
            reach = hi
    return wall_s - busy


def overhead(wall_s: float, job_seconds: float, cores: int) -> tuple[float, float]:
    """Snakemake's overhead: ``wall - job_seconds / cores``, in seconds and % of wall.

    Parameters
    ----------
    wall_s : float
        Wall time of the whole run.
    job_seconds : float
        Summed wall time of all jobs.
    cores : int
        Cores given to Snakemake.

    Returns
    -------
    (float, float)
        Overhead seconds and its share of ``wall_s`` in percent.
    """
    if wall_s <= 0 or cores < 1:
        raise ValueError(f"Arguments 'wall_s' and 'cores' must be > 0, got {wall_s}, {cores}")
    seconds = wall_s - job_seconds / cores
    return seconds, 100 * seconds / wall_s


def planned_jobs(output: str) -> int | None:
    """Job count from the last ``total N`` line of Snakemake's job stats, or None."""
    totals = re.findall(r"^total\s+(\d+)\s*$", output, flags=re.MULTILINE)
    return int(totals[-1]) if totals else None


def check(measured: Measurement, what: str, log_path: Path) -> None:
    """Raise with the tail of the log when a measured command failed."""
    if measured.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{what} failed ({measured.returncode}); {log_path}:\n{tail}")


def per_second(n_files: int, wall_s: float) -> float:
    """Files per second."""
    return n_files / wall_s if wall_s > 0 else float("nan")


def run_workflow(
    study: Path,
    n_files: int,
    run: Path,
    cores: int,
    interval: float,
    stage: str,
    *targets: str,
    fresh: bool = True,
) -> Row:
    """Run the workflow (or its ``targets``) on ``study`` in ``run``; one row.

    Parameters
    ----------
    study : Path
        Study folder.
    n_files : int
        Files in it.
    run : Path
        Folder to run in; results go to ``run/results``.
    cores : int
        Cores given to Snakemake.
    interval : float
        Seconds between RSS samples.
    stage : str
        Label of the row (also names the log file).
    *targets : str
        Snakemake targets; the whole workflow when none.
    fresh : bool
        Empty ``run`` first; when False, this is a rerun and only the jobs it ran count.

    Returns
    -------
    Row
        Wall time, files/s, peak RSS, jobs run and Snakemake's overhead.
    """
    if fresh:
        fresh_folder(run)
    log.info("%s on %d files in %s", stage, n_files, run)
    log_path = run / f"snakemake_{stage}.log"
    m = run_measured(snakemake_cmd(study, cores, *targets), run, log_path, tool_env(), interval)
    check(m, f"snakemake ({stage})", log_path)
    jobs, job_s = job_benchmarks(run / "results", None if fresh else m.started_at)
    over_s, over_pct = overhead(m.wall_s, job_s, cores)
    idle = idle_seconds(run / "results", m.started_at, m.wall_s)
    log.info("%s: %.1f s, %d jobs summing %.1f s", stage, m.wall_s, jobs, job_s)
    log.info(
        "%s: no job running for %.1f s; largest process %.0f MiB, tree %.0f MiB",
        stage,
        idle,
        m.max_process_rss_mib,
        m.tree_rss_mib,
    )
    rate = per_second(n_files, m.wall_s)
    return Row(n_files, stage, m.wall_s, rate, m.peak_rss_mib, jobs, over_s, over_pct)


def bench_workflow(study: Path, n_files: int, run: Path, cores: int, interval: float) -> Row:
    """The whole workflow on ``study`` in the fresh folder ``run``; one ``workflow`` row."""
    return run_workflow(study, n_files, run, cores, interval, "workflow")


def bench_metadata(study: Path, n_files: int, run: Path, cores: int, interval: float) -> Row:
    """Scan + extract + merge (``instances.parquet``) in the fresh folder ``run``; one row."""
    return run_workflow(study, n_files, run, cores, interval, "metadata", METADATA_TARGET)


def bench_command(
    cmd: Sequence[str],
    study: Path,
    n_files: int,
    run: Path,
    interval: float,
    stage: str,
    jobs: int | None = 1,
) -> Row:
    """Run a one-process baseline in the fresh folder ``run``; one row named ``stage``."""
    fresh_folder(run)
    log.info("%s on %d files in %s", stage, n_files, run)
    log_path = run / f"{stage}.log"
    m = run_measured(cmd, run, log_path, tool_env(), interval)
    check(m, stage, log_path)
    log.info("%s: %.1f s", stage, m.wall_s)
    return Row(n_files, stage, m.wall_s, per_second(n_files, m.wall_s), m.peak_rss_mib, jobs)


def bench_naive(study: Path, n_files: int, run: Path, interval: float) -> Row:
    """Run ``naive_baseline.py`` on ``study`` in the fresh folder ``run``; one ``naive`` row."""
    cmd = [sys.executable, str(NAIVE), "--study", str(study.resolve()), "--out", "out"]
    return bench_command(cmd, study, n_files, run, interval, "naive")


def bench_pydicom_loop(study: Path, n_files: int, run: Path, interval: float) -> Row:
    """Run ``pydicom_loop.py`` (header-only reads, no outputs); one ``pydicom-loop`` row."""
    cmd = [sys.executable, str(PYDICOM_LOOP), "--study", str(study.resolve())]
    return bench_command(cmd, study, n_files, run, interval, "pydicom-loop")


def bench_read_bytes(study: Path, n_files: int, run: Path, interval: float) -> Row:
    """Read every file's bytes with ``cat`` (this also warms the file cache); one row."""
    script = f"find {shlex.quote(str(study.resolve()))} -type f -exec cat {{}} + > /dev/null"
    return bench_command(["sh", "-c", script], study, n_files, run, interval, "read-bytes", None)


def bench_incremental(
    study: Path, n_files: int, run: Path, cores: int, interval: float, source: str, full: Row
) -> list[Row]:
    """After a full run in ``run``: add one series folder and rerun, then rerun unchanged.

    Parameters
    ----------
    study : Path
        The study the full run used; a new series folder is written into it.
    n_files : int
        Files in it before the new series.
    run : Path
        Folder of the finished full run.
    cores : int
        Cores given to Snakemake.
    interval : float
        Seconds between RSS samples.
    source : str
        The study's source (picks the series to add, see :func:`build_study.add_series`).
    full : Row
        The full run's row; ``pct_of_full`` is the rerun's wall time as % of its.

    Returns
    -------
    list of Row
        ``add-series`` and ``no-change`` (jobs: those that ran; 0 is expected).
    """
    folder = build_study.add_series(study, source)
    size = n_files + count_files(folder)
    log.info("added %d files in %s", size - n_files, folder)
    rows = []
    for stage in ("add-series", "no-change"):
        row = run_workflow(study, size, run, cores, interval, stage, fresh=False)
        pct = 100 * row.wall_s / full.wall_s
        log.info("%s: %.1f s, %.1f %% of the full run, %d jobs", stage, row.wall_s, pct, row.jobs)
        rows.append(replace(row, files_per_s=None, pct_of_full=pct))
    if rows[-1].jobs:
        log.warning("the rerun with nothing changed ran %d jobs, expected 0", rows[-1].jobs)
    return rows


def bench_size(
    study: Path,
    n_files: int,
    runs: Path,
    cores: int,
    interval: float,
    source: str,
    rows: list[Row],
) -> list[Row]:
    """Every stage on one built study, baselines first (they also warm the file cache).

    Parameters
    ----------
    study : Path
        The built study (not modified: the full run uses a hard-linked mirror).
    n_files : int
        Files in it.
    runs : Path
        Folder for the run folders.
    cores : int
        Cores given to Snakemake.
    interval : float
        Seconds between RSS samples.
    source : str
        The study's source.
    rows : list of Row
        Each stage's row is appended as soon as it is measured (so a failing stage
        leaves the rows before it).

    Returns
    -------
    list of Row
        ``rows``, with read-bytes, pydicom-loop, naive, metadata, workflow, add-series
        and no-change appended.
    """
    tag = f"{source}_{n_files}"
    rows.append(bench_read_bytes(study, n_files, runs / f"read_bytes_{tag}", interval))
    rows.append(bench_pydicom_loop(study, n_files, runs / f"pydicom_loop_{tag}", interval))
    rows.append(bench_naive(study, n_files, runs / f"naive_{tag}", interval))
    run = runs / f"metadata_stages_{tag}"
    rows.append(bench_metadata(study, n_files, run, cores, interval))
    mirror = link_tree(study, runs / f"study_{tag}")
    run = runs / f"workflow_{tag}"
    full = bench_workflow(mirror, n_files, run, cores, interval)
    rows.append(full)
    rows += bench_incremental(mirror, n_files, run, cores, interval, source, full)
    return rows


def bench_dry_run(
    study: Path,
    n_files: int,
    run: Path,
    cores: int,
    interval: float,
    stage: str = "dry-run",
    fresh: bool = True,
) -> Row:
    """Time ``snakemake -n`` for the whole workflow on ``study`` in ``run``.

    Parameters
    ----------
    study : Path
        Study folder.
    n_files : int
        Files in it.
    run : Path
        Folder to run in.
    cores : int
        Cores given to Snakemake.
    interval : float
        Seconds between RSS samples.
    stage : str
        Label of the row.
    fresh : bool
        Empty ``run`` first; when False, finished checkpoints in it are reused, so the
        dry run expands the DAG past them.

    Returns
    -------
    Row
        With ``jobs`` the number of jobs the dry run plans.
    """
    if fresh:
        fresh_folder(run)
    log.info("%s on %d files in %s", stage, n_files, run)
    log_path = run / f"{stage}.log"
    m = run_measured(snakemake_cmd(study, cores, "-n"), run, log_path, tool_env(), interval)
    check(m, "snakemake -n", log_path)
    jobs = planned_jobs(log_path.read_text(errors="replace"))
    return Row(n_files, stage, m.wall_s, per_second(n_files, m.wall_s), m.peak_rss_mib, jobs)


def bench_metadata_only(
    study: Path, n_files: int, run: Path, cores: int, interval: float
) -> list[Row]:
    """Run scan + extract + merge only, then time a dry run of the rest; two rows."""
    row = run_workflow(study, n_files, run, cores, interval, "metadata-only", METADATA_TARGET)
    resolved = bench_dry_run(study, n_files, run, cores, interval, "dry-run-resolved", False)
    return [row, resolved]


# --- per-vendor costs of one file ------------------------------------------------------------


def spread(items: Sequence[Path], limit: int) -> list[Path]:
    """Up to ``limit`` items evenly spread over ``items`` (all of them when fewer)."""
    if len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def fresh_process_ms(measure: str, files: Sequence[Path], repeats: int) -> float:
    """Milliseconds per file of ``file_costs.py --measure``: the best of ``repeats`` processes.

    Each pass runs in a new process, so per-process memos start empty every time.
    """
    best = float("inf")
    cmd = [sys.executable, str(FILE_COSTS), "--measure", measure, *map(str, files)]
    for _ in range(repeats):
        done = subprocess.run(cmd, capture_output=True, text=True, env=tool_env(), check=False)
        if done.returncode != 0:
            raise RuntimeError(f"file_costs.py --measure {measure} failed:\n{done.stderr[-3000:]}")
        best = min(best, json.loads(done.stdout.splitlines()[-1])["ms_per_file"])
    return best


STEPS = (
    "extract_metadata",
    "merge_metadata",
    "save_slices",
    "render_thumbnails",
    "make_contact_sheets",
    "finalize_tables",
    "build_review_page",
)
"""Step scripts whose start-up (imports) every job of the step pays."""


def startup_seconds(cmd: Sequence[str], repeats: int) -> tuple[float, float]:
    """Best wall and CPU seconds (user + system) of ``repeats`` runs of ``cmd``."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        before = os.times()
        started = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=tool_env(), check=True)
        wall = time.perf_counter() - started
        after = os.times()
        cpu = (after.children_user - before.children_user) + (
            after.children_system - before.children_system
        )
        best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
    return best_wall, best_cpu


def profile_startups(repeats: int) -> list[tuple[str, float, float]]:
    """``(command, wall s, CPU s)`` of each step script's start-up (``--help``: every import,
    no work) and of Snakemake's (``--version``), best of ``repeats``.
    """
    rows = []
    for step in STEPS:
        cmd = [sys.executable, str(SCRIPTS / f"{step}.py"), "--help"]
        rows.append((step, *startup_seconds(cmd, repeats)))
    cmd = [sys.executable, "-m", "snakemake", "--version"]
    rows.append(("snakemake --version", *startup_seconds(cmd, repeats)))
    return rows


def startup_table(rows: Sequence[tuple[str, float, float]]) -> str:
    """Markdown table of :func:`profile_startups` rows."""
    lines = ["| start-up of | wall_s | cpu_s |", "| :--- | ---: | ---: |"]
    lines += [f"| {name} | {wall:.2f} | {cpu:.2f} |" for name, wall, cpu in rows]
    return "\n".join(lines)


def vendor_files(limit: int) -> dict[str, list[Path]]:
    """Up to ``limit`` files of each real series present, by vendor (demo's two shared)."""
    groups: dict[str, list[build_study.Template]] = {}
    for t in build_study.vendor_templates() + build_study.demo_templates():
        groups.setdefault(t.vendor, []).append(t)
    return {
        vendor: [p for t in found for p in spread(t.files(), max(1, limit // len(found)))]
        for vendor, found in groups.items()
    }


def profile_vendors(limit: int, repeats: int) -> list[VendorRow]:
    """Per-file costs of reading and extracting each vendor's real headers.

    Each cost is timed by ``file_costs.py`` in fresh processes (per-process memos start
    empty, as in an extract job); file sizes, element counts and JSON sizes are taken
    here.

    Parameters
    ----------
    limit : int
        Most files timed per vendor, spread over its series.
    repeats : int
        Processes per cost; the fastest counts.

    Returns
    -------
    list of VendorRow
        One row per vendor present: GE, Philips, Toshiba, Siemens (when
        ``../shared/data/vendor-mr`` exists), demo.
    """
    import file_costs

    read = file_costs.operation("read")
    rows = []
    for vendor, paths in vendor_files(limit).items():
        extract = file_costs.operation("extract", paths)
        elements, json_bytes, failed = 0, 0, 0
        for path in paths:
            elements += sum(1 for _ in read(path).iterall())
            row, _errors = extract(path)
            failed += row is None
            json_bytes += len(row["header_json"]) if row else 0
        if failed:
            log.warning("%s: %d of %d files gave no instance row", vendor, failed, len(paths))
        rows.append(
            VendorRow(
                vendor=vendor,
                files=len(paths),
                file_kib=sum(p.stat().st_size for p in paths) / len(paths) / 1024,
                elements=elements / len(paths),
                json_kib=json_bytes / len(paths) / 1024,
                pydicom_read_ms=fresh_process_ms("read", paths, repeats),
                extract_ms=fresh_process_ms("extract", paths, repeats),
                reference_json_ms=fresh_process_ms("reference", paths, repeats),
            )
        )
        pairs = zip(VENDOR_COLUMNS, cells(rows[-1]), strict=True)
        log.info("%s", "  ".join(f"{k}={v}" for k, v in pairs))
    return rows


# --- the tables ------------------------------------------------------------------------------


def with_ratios(rows: Iterable[Row]) -> list[Row]:
    """Rows with files/s ratios to the naive script and the pydicom loop of the same size.

    Filled in for :data:`RATED_STAGES` where that baseline was measured (above 1: faster
    than the baseline).
    """
    rows = list(rows)
    naive = {r.size: r.files_per_s for r in rows if r.stage == "naive"}
    plain = {r.size: r.files_per_s for r in rows if r.stage == "pydicom-loop"}
    out = []
    for r in rows:
        vs_naive = vs_plain = None
        if r.stage in RATED_STAGES and r.files_per_s:
            vs_naive = r.files_per_s / naive[r.size] if naive.get(r.size) else None
            vs_plain = r.files_per_s / plain[r.size] if plain.get(r.size) else None
        out.append(replace(r, ratio_vs_naive=vs_naive, ratio_vs_pydicom=vs_plain))
    return out


def cells(row: Row | VendorRow, columns: Sequence[str] | None = None) -> list[str]:
    """A row's values as text: floats to 2 decimals (1 for big ones), None as ``-``."""
    out = []
    for name in columns or (VENDOR_COLUMNS if isinstance(row, VendorRow) else COLUMNS):
        value = getattr(row, name)
        if value is None:
            out.append("-")
        elif isinstance(value, float):
            out.append(f"{value:.1f}" if abs(value) >= 1000 else f"{value:.2f}")
        else:
            out.append(str(value))
    return out


#: Columns holding text, aligned left.
TEXT_COLUMNS = ("stage", "vendor")


def aligned_table(rows: Sequence[Row | VendorRow], columns: Sequence[str] = COLUMNS) -> str:
    """Plain-text table, numbers right-aligned, text left-aligned."""
    body = [list(columns)] + [cells(r, columns) for r in rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(columns))]
    lines = []
    for line in body:
        parts = [
            c.ljust(w) if name in TEXT_COLUMNS else c.rjust(w)
            for c, w, name in zip(line, widths, columns, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row | VendorRow], columns: Sequence[str] = COLUMNS) -> str:
    """GitHub markdown table of the rows."""
    align = [":---" if name in TEXT_COLUMNS else "---:" for name in columns]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cells(r, columns)) + " |" for r in rows]
    return "\n".join(lines)


def tsv_cell(value: object) -> str:
    """A TSV cell: None empty, floats to 3 decimals."""
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def tsv_text(rows: Sequence[Row | VendorRow], columns: Sequence[str] = COLUMNS) -> str:
    """Tab-separated table; floats to 3 decimals, None as an empty cell."""
    lines = ["\t".join(columns)]
    for r in rows:
        lines.append("\t".join(tsv_cell(getattr(r, c)) for c in columns))
    return "\n".join(lines) + "\n"


def memory_total_gib(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """MemTotal from ``/proc/meminfo`` in GiB, or None where there is no such file."""
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, flags=re.MULTILINE)
    return int(match.group(1)) / 1024**2 if match else None


def commit_label(root: Path = ROOT) -> str:
    """The checked-out commit, with ``+local changes`` when measured code differs from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", *MEASURED_PATHS],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"
    return f"commit {head}" + (" +local changes" if dirty else "")


#: Paths whose uncommitted changes make a measurement differ from its commit.
MEASURED_PATHS = ("Snakefile", "workflow", "scripts", "config", "tests/benchmarks")


def machine_line(cores: int, commit: str | None = None) -> str:
    """One line naming the commit, machine, tools and the load when the run started."""
    memory = memory_total_gib()
    mem = f"{memory:.1f} GiB RAM" if memory is not None else "RAM unknown"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        from importlib.metadata import version

        snakemake_version = version("snakemake")
        pydicom_version = version("pydicom")
    except Exception:  # noqa: BLE001 - only a label
        snakemake_version = pydicom_version = "?"
    return (
        f"Measured on {commit or commit_label()}, {time.strftime('%Y-%m-%d')}. "
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, {mem}; "
        f"Python {platform.python_version()}, Snakemake {snakemake_version}, "
        f"pydicom {pydicom_version}; --cores {cores}; load average {load:.2f} at start"
    )


NOTES = """\
- size: files in the study (build_study writes whole series, so slightly more than asked);
  source: {source} ({composition}).
- read-bytes: `cat` of every file (warms the file cache); pydicom-loop: `pydicom_loop.py`,
  `dcmread(path, stop_before_pixels=True)` of every file, one process, no outputs; naive:
  `naive_baseline.py` (one process, full `dcmread` of every file, a DataFrame, 3 `.npy` +
  3 PNG + a 16-tile matplotlib sheet per series).
- metadata: scan + extract + merge (target `results/metadata/instances.parquet`) in a fresh
  folder; workflow: full `snakemake` run in a fresh folder.
- add-series: rerun after adding one new series folder (a fresh-UID copy of the Toshiba
  series, or of the demo MR when building from the demo); no-change: a rerun with nothing
  changed (jobs must be 0); pct_of_full: wall time as % of the workflow row.
- dry-run: `snakemake -n` in a fresh folder on hard-linked replicas of a built study (the
  study is scanned while the DAG is built, so it plans every extract shard and the
  merge); metadata-only: scan + extract + merge on a study of that size; dry-run-resolved:
  `snakemake -n` after it (plans every slice/thumbnail/sheet batch).
- peak_rss_mib: peak of the summed RSS of the whole process tree, sampled from /proc every
  {interval} s, floored by the exact largest single-process `ru_maxrss` (os.wait4); shared
  pages are counted once per process.
- jobs: Snakemake benchmark TSVs written by the run (one per job, `all` excluded); for dry
  runs, jobs planned; 1 for the one-process baselines.
- overhead_s = wall_s - (summed job `s`) / cores; includes cores idle on serial DAG parts.
- ratio_vs_naive, ratio_vs_pydicom = files_per_s / the baseline's files_per_s at the same
  size (above 1: faster than the baseline).
- vendors: per file, on up to {profile_files} files of each real series, best of
  {repeats} passes, each in a fresh process (per-process memos start empty, as in an
  extract job; one pydicom test file first, untimed):
  `pydicom.dcmread(stop_before_pixels=True)`;
  `extract_metadata.extract_file` (read, typed columns, DICOM JSON); reference JSON
  `dicom_json.header_json(dicom_io.read_header(path).dataset)`. elements counts nested
  ones; json_kib is the size of the extracted `header_json`.
"""


def write_outputs(
    out_dir: Path,
    rows: Sequence[Row],
    machine: str,
    notes: dict[str, object],
    skipped: Sequence[str] = (),
    vendors: Sequence[VendorRow] = (),
    startups: Sequence[tuple[str, float, float]] = (),
) -> None:
    """Write ``benchmark.md`` (machine, tables, notes), ``benchmark.tsv``, ``vendors.tsv``.

    Parameters
    ----------
    out_dir : Path
        Folder for the files (made when missing).
    rows : sequence of Row
        The stage table.
    machine : str
        Line naming the commit and machine, from :func:`machine_line`.
    notes : dict of str to object
        Values filled into :data:`NOTES` (source, composition, interval, profile_files,
        repeats).
    skipped : sequence of str
        Reasons for studies left out (not enough disk), listed under the notes.
    vendors : sequence of VendorRow
        The per-vendor table (``vendors.tsv`` is written only when given).
    startups : sequence of (str, float, float)
        Start-up of each step script and of Snakemake, from :func:`profile_startups`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    md = f"{machine}\n\n"
    if vendors:
        md += f"{markdown_table(vendors, VENDOR_COLUMNS)}\n\n"
        text = tsv_text(vendors, VENDOR_COLUMNS)
        (out_dir / "vendors.tsv").write_text(text, encoding="utf-8")
    if startups:
        md += f"{startup_table(startups)}\n\n"
    md += f"{markdown_table(rows)}\n\n{NOTES.format(**notes)}"
    md += "".join(f"- skipped: {reason}\n" for reason in skipped)
    (out_dir / "benchmark.md").write_text(md, encoding="utf-8")
    (out_dir / "benchmark.tsv").write_text(tsv_text(rows), encoding="utf-8")


# --- command line ----------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """Argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """Argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        nargs="*",
        type=positive_int,
        default=[2000, 10000],
        help="study sizes (files) for the stage comparison",
    )
    parser.add_argument(
        "--source",
        choices=build_study.SOURCES,
        default="vendor",
        help="series the studies are built from (vendor falls back to demo when missing)",
    )
    parser.add_argument(
        "--dry-run-sizes",
        nargs="*",
        type=positive_int,
        default=[100000],
        help="sizes for timing `snakemake -n` on hard-linked replicas",
    )
    parser.add_argument(
        "--metadata-only-sizes",
        nargs="*",
        type=positive_int,
        default=[],
        help="sizes of real studies for a scan+extract+merge-only run",
    )
    parser.add_argument(
        "--profile-files",
        type=non_negative_int,
        default=100,
        help="files per vendor for the per-file costs (0: skip them)",
    )
    parser.add_argument(
        "--profile-repeats", type=positive_int, default=3, help="passes per per-file cost"
    )
    parser.add_argument("--out-dir", type=Path, default=Path("benchmark"), help="result folder")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="studies and runs (default: <out-dir>/work); built studies are reused",
    )
    parser.add_argument("--cores", type=positive_int, default=2, help="snakemake --cores")
    parser.add_argument(
        "--dry-run-base",
        type=positive_int,
        default=1000,
        help="size of the built study replicated for dry runs (when not in --sizes)",
    )
    parser.add_argument(
        "--sample-interval", type=float, default=0.1, help="seconds between RSS samples"
    )
    parser.add_argument(
        "--commit",
        default=None,
        help="label of the measured code, e.g. 'commit abc123' for an exported snapshot "
        "(default: the checkout's commit, marked when measured files have local changes)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the tables and write them to the output folder.

    Returns 0, or 1 when a measured command failed (its log tail is logged; the rows
    measured before it are still written).
    """
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    work = (args.work_dir or args.out_dir / "work").resolve()
    runs = work / "runs"
    source = build_study.resolve_source(args.source)
    machine = machine_line(args.cores, args.commit)
    log.info("%s", machine)
    rows: list[Row] = []
    skipped: list[str] = []
    built: dict[int, tuple[Path, int]] = {}
    interval = args.sample_interval
    failed = None

    def study_or_skip(size: int) -> tuple[Path, int] | None:
        try:
            built[size] = built.get(size) or ensure_study(work, size, source)
        except NotEnoughDisk as exc:
            log.warning("skipped: %s", exc)
            skipped.append(str(exc))
            return None
        return built[size]

    vendors, startups = [], []
    if args.profile_files:
        try:
            vendors = profile_vendors(args.profile_files, args.profile_repeats)
        except RuntimeError as exc:
            log.error("%s", exc)
            skipped.append(f"per-vendor costs: {str(exc).splitlines()[0]}")
        startups = profile_startups(args.profile_repeats)
    try:
        for size in args.sizes:
            if (study := study_or_skip(size)) is not None:
                bench_size(study[0], study[1], runs, args.cores, interval, source, rows)
        base = None
        if args.dry_run_sizes:
            base = built[max(built)] if built else study_or_skip(args.dry_run_base)
        for size in args.dry_run_sizes if base else ():
            try:
                linked = ensure_linked_study(base[0], work, size)
            except NotEnoughDisk as exc:
                log.warning("skipped: %s", exc)
                skipped.append(str(exc))
                continue
            run = runs / f"dry_run_{size}"
            rows.append(bench_dry_run(linked, size, run, args.cores, interval))
        for size in args.metadata_only_sizes:
            if (study := study_or_skip(size)) is not None:
                run = runs / f"metadata_{size}"
                rows += bench_metadata_only(study[0], study[1], run, args.cores, interval)
    except RuntimeError as exc:
        log.error("%s", exc)
        failed = str(exc).splitlines()[0]
        skipped.append(f"stopped: {failed} (rows measured before it are kept)")
    rows = with_ratios(rows)
    biggest = max(args.sizes or args.metadata_only_sizes or [args.dry_run_base])
    notes = {
        "source": source,
        "composition": f"{biggest} files: {build_study.composition(biggest, source)}",
        "interval": interval,
        "profile_files": args.profile_files,
        "repeats": args.profile_repeats,
    }
    write_outputs(args.out_dir, rows, machine, notes, skipped, vendors, startups)
    if vendors:
        print(aligned_table(vendors, VENDOR_COLUMNS))
        print()
    if startups:
        print(startup_table(startups))
        print()
    print(aligned_table(rows))
    print(machine)
    log.info("written %s and %s", args.out_dir / "benchmark.md", args.out_dir / "benchmark.tsv")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
