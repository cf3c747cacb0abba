"""Benchmark the workflow against a naive one-process script, at several study sizes.

For each size in ``--sizes`` a study is built with :func:`build_study.build` (real series,
fresh UIDs, deterministic; reused when already built), the whole workflow runs on it in a
fresh folder, and ``naive_baseline.py`` does the same job by hand. ``--dry-run-sizes``
times ``snakemake -n`` on hard-linked replicas of a built study in a fresh folder (the
study is scanned while the DAG is built, so this plans every extract shard);
``--metadata-only-sizes``
runs only scan + extract + merge (``results/metadata/series.parquet``) on a real study of
that size and then times a dry run of the rest with the checkpoints resolved.

Wall time is measured around each command. Peak RSS is measured for the whole process
tree: a thread reads ``/proc/<pid>/stat`` of every process every ``--sample-interval``
seconds and sums the RSS of the command's descendants; the result is floored by the
kernel's exact ``ru_maxrss`` from ``os.wait4`` (which is only the largest single process
of the tree, not a sum). Summed RSS counts shared pages (libraries) once per process, so
it overstates a little; sampling can miss spikes shorter than the interval.

Jobs and their summed run time come from Snakemake's benchmark TSV files under
``results/benchmarks/`` (one per job; ``rule all`` has none). Snakemake's overhead is
``wall - summed job seconds / cores``; it includes cores left idle by serial parts of
the DAG (scan -> extract -> merge), so it is an upper bound on Snakemake's own cost.

Prints one aligned table and writes it to ``<out-dir>/benchmark.md`` (with a line naming
the machine and these notes) and ``<out-dir>/benchmark.tsv``.
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
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import build_study

log = logging.getLogger("run_benchmark")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SNAKEFILE = ROOT / "Snakefile"
CONFIG = ROOT / "config" / "config.yaml"
NAIVE = HERE / "naive_baseline.py"
METADATA_TARGET = "results/metadata/series.parquet"

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
    """One line of the result table; None shows as ``-`` (empty in the TSV)."""

    size: int
    stage: str
    wall_s: float
    files_per_s: float | None = None
    peak_rss_mib: float | None = None
    jobs: int | None = None
    overhead_s: float | None = None
    overhead_pct: float | None = None
    ratio_vs_naive: float | None = None


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


def tree_rss_pages(table: dict[int, tuple[int, int]], root: int) -> int:
    """Summed resident pages of ``root`` and all its descendants.

    Parameters
    ----------
    table : dict of int to (int, int)
        ``pid -> (ppid, rss_pages)`` as from :func:`read_proc_table`.
    root : int
        Pid at the top of the tree.

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
        if pid in table:
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
    """

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.peak_bytes = 0
        self._stop_event = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.available = Path("/proc/self/stat").exists()

    def run(self) -> None:  # noqa: D102 - threading.Thread API
        while self.available and not self._stop_event.is_set():
            rss = tree_rss_pages(read_proc_table(), self.root) * self._page
            self.peak_bytes = max(self.peak_bytes, rss)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        """Stop sampling and wait for the thread to end."""
        self._stop_event.set()
        self.join()


def run_measured(
    cmd: Sequence[str],
    cwd: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    interval: float = 0.1,
) -> Measurement:
    """Run a command, capturing its output in a file, and measure time and memory.

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
    with open(log_path, "wb") as out:
        started_at = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeRssSampler(proc.pid, interval)
        sampler.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            sampler.stop()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is KiB on Linux (bytes on macOS); it covers the child and the
    # descendants it waited for, as the maximum of single processes.
    scale = 1 if sys.platform == "darwin" else 1024
    return Measurement(
        wall_s=wall,
        tree_rss_mib=sampler.peak_bytes / MIB,
        max_process_rss_mib=usage.ru_maxrss * scale / MIB,
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


def mean_template_file_bytes() -> float:
    """Mean size of the template series' files, to estimate a built study's size."""
    sizes = [p.stat().st_size for t in build_study.TEMPLATES for p in t.iterdir() if p.is_file()]
    return sum(sizes) / len(sizes)


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


def ensure_study(work: Path, n_files: int) -> tuple[Path, int]:
    """Build (or reuse) a study of about ``n_files`` real files under ``work/studies``.

    Parameters
    ----------
    work : Path
        Benchmark work folder.
    n_files : int
        Files requested; :func:`build_study.build` writes whole series, so a few more.

    Returns
    -------
    (Path, int)
        The study folder and its file count.

    Raises
    ------
    NotEnoughDisk
        When the study would not fit (checked before writing anything).
    """
    study = work / "studies" / f"study_{n_files}"
    marker = study.with_name(study.name + ".json")
    stamp = {"requested": n_files, "builder": builder_fingerprint()}
    if marker.exists() and study.is_dir():
        done = json.loads(marker.read_text())
        if {k: done.get(k) for k in stamp} == stamp:
            log.info("reusing %s (%d files)", study, done["files"])
            return study, done["files"]
    problem = disk_problem(work, n_files * mean_template_file_bytes() * 1.05, n_files)
    if problem:
        raise NotEnoughDisk(f"{n_files}-file study: {problem}")
    if study.exists():
        shutil.rmtree(study)
    marker.unlink(missing_ok=True)
    log.info("building a %d-file study in %s", n_files, study)
    start = time.perf_counter()
    written = build_study.build(study, n_files)
    log.info("built %d files in %.1f s", written, time.perf_counter() - start)
    marker.write_text(json.dumps({**stamp, "files": written}, indent=1) + "\n")
    return study, written


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


def job_benchmarks(results: Path) -> tuple[int, float]:
    """Jobs run and their summed seconds, from Snakemake's benchmark TSV files.

    Parameters
    ----------
    results : Path
        The workflow's results folder; ``benchmarks/**/*.tsv`` holds one file per job.

    Returns
    -------
    (int, float)
        Number of benchmark files and the sum of their ``s`` column (all repeats).
    """
    jobs, seconds = 0, 0.0
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
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
    study: Path, n_files: int, run: Path, cores: int, interval: float, stage: str, *targets: str
) -> Row:
    """Run the workflow (or its ``targets``) on ``study`` in the fresh folder ``run``; one row."""
    fresh_folder(run)
    log.info("%s on %d files in %s", stage, n_files, run)
    log_path = run / "snakemake.log"
    m = run_measured(snakemake_cmd(study, cores, *targets), run, log_path, tool_env(), interval)
    check(m, f"snakemake ({stage})", log_path)
    jobs, job_s = job_benchmarks(run / "results")
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


def bench_naive(study: Path, n_files: int, run: Path, interval: float) -> Row:
    """Run ``naive_baseline.py`` on ``study`` in the fresh folder ``run``; one ``naive`` row."""
    fresh_folder(run)
    log.info("naive baseline on %d files in %s", n_files, run)
    log_path = run / "naive.log"
    cmd = [sys.executable, str(NAIVE), "--study", str(study.resolve()), "--out", "out"]
    m = run_measured(cmd, run, log_path, tool_env(), interval)
    check(m, "naive baseline", log_path)
    return Row(n_files, "naive", m.wall_s, per_second(n_files, m.wall_s), m.peak_rss_mib, 1)


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


# --- the table -----------------------------------------------------------------------------


def with_ratios(rows: Iterable[Row]) -> list[Row]:
    """Rows with ``ratio_vs_naive`` (workflow files/s over naive files/s) filled in."""
    rows = list(rows)
    naive = {r.size: r.files_per_s for r in rows if r.stage == "naive"}
    out = []
    for r in rows:
        ratio = None
        if r.stage in ("workflow", "naive") and naive.get(r.size):
            ratio = r.files_per_s / naive[r.size]
        out.append(Row(**{**r.__dict__, "ratio_vs_naive": ratio}))
    return out


def cells(row: Row) -> list[str]:
    """A row's values as text: floats to 2 decimals (1 for big ones), None as ``-``."""
    out = []
    for name in COLUMNS:
        value = getattr(row, name)
        if value is None:
            out.append("-")
        elif isinstance(value, float):
            out.append(f"{value:.1f}" if abs(value) >= 1000 else f"{value:.2f}")
        else:
            out.append(str(value))
    return out


def aligned_table(rows: Sequence[Row]) -> str:
    """Plain-text table, numbers right-aligned, stage left-aligned."""
    body = [list(COLUMNS)] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]
    lines = []
    for line in body:
        parts = [
            c.ljust(w) if name == "stage" else c.rjust(w)
            for c, w, name in zip(line, widths, COLUMNS, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    """GitHub markdown table of the rows."""
    align = ["---:" if name != "stage" else ":---" for name in COLUMNS]
    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def tsv_cell(value: object) -> str:
    """A TSV cell: None empty, floats to 3 decimals."""
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def tsv_text(rows: Sequence[Row]) -> str:
    """Tab-separated table; floats to 3 decimals, None as an empty cell."""
    lines = ["\t".join(COLUMNS)]
    for r in rows:
        values = [getattr(r, c) for c in COLUMNS]
        lines.append("\t".join(tsv_cell(v) for v in values))
    return "\n".join(lines) + "\n"


def memory_total_gib(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """MemTotal from ``/proc/meminfo`` in GiB, or None where there is no such file."""
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, flags=re.MULTILINE)
    return int(match.group(1)) / 1024**2 if match else None


def machine_line(cores: int) -> str:
    """One line naming the machine, the tools and the load when the run started."""
    memory = memory_total_gib()
    mem = f"{memory:.1f} GiB RAM" if memory is not None else "RAM unknown"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        from importlib.metadata import version

        snakemake_version = version("snakemake")
    except Exception:  # noqa: BLE001 - only a label
        snakemake_version = "?"
    return (
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, {mem}; "
        f"Python {platform.python_version()}, Snakemake {snakemake_version}; "
        f"--cores {cores}; load average {load:.2f} at start"
    )


NOTES = """\
- size: files in the study (build_study writes whole series, so slightly more than asked).
- workflow: full `snakemake` run in a fresh folder; naive: `naive_baseline.py` (one process,
  full `dcmread` of every file, 3 `.npy` + 3 PNG + a 16-tile matplotlib sheet per series).
- dry-run: `snakemake -n` in a fresh folder on hard-linked replicas of a built study (the
  study is scanned while the DAG is built, so it plans every extract shard and the
  merge); dry-run-resolved: `snakemake -n` after a metadata-only run (plans every
  slice/thumbnail/sheet batch).
- metadata-only: scan + extract + merge (`results/metadata/series.parquet`).
- peak_rss_mib: peak of the summed RSS of the whole process tree, sampled from /proc every
  {interval} s, floored by the exact largest single-process `ru_maxrss` (os.wait4); shared
  pages are counted once per process.
- jobs: Snakemake benchmark TSVs (one per job, `all` excluded); for dry runs, jobs planned.
- overhead_s = wall_s - (summed job `s`) / cores; includes cores idle on serial DAG parts.
- ratio_vs_naive = workflow files_per_s / naive files_per_s (above 1: the workflow is faster).
"""


def write_outputs(
    out_dir: Path,
    rows: Sequence[Row],
    machine: str,
    interval: float,
    skipped: Sequence[str] = (),
) -> None:
    """Write ``benchmark.md`` (machine line, table, notes) and ``benchmark.tsv``.

    Parameters
    ----------
    out_dir : Path
        Folder for both files (made when missing).
    rows : sequence of Row
        The table.
    machine : str
        Line naming the machine, from :func:`machine_line`.
    interval : float
        RSS sampling interval, named in the notes.
    skipped : sequence of str
        Reasons for studies left out (not enough disk), listed under the notes.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    md = f"{machine}\n\n{markdown_table(rows)}\n\n{NOTES.format(interval=interval)}"
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        nargs="*",
        type=positive_int,
        default=[1000, 10000],
        help="study sizes (files) for the workflow vs naive comparison",
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
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table and write it to the output folder.

    Returns 0, or 1 when a measured command failed (its log tail is logged).
    """
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    work = (args.work_dir or args.out_dir / "work").resolve()
    runs = work / "runs"
    machine = machine_line(args.cores)
    log.info("%s", machine)
    rows: list[Row] = []
    skipped: list[str] = []
    built: dict[int, tuple[Path, int]] = {}
    interval = args.sample_interval

    def study_or_skip(size: int) -> tuple[Path, int] | None:
        try:
            built[size] = built.get(size) or ensure_study(work, size)
        except NotEnoughDisk as exc:
            log.warning("skipped: %s", exc)
            skipped.append(str(exc))
            return None
        return built[size]

    try:
        for size in args.sizes:
            if (study := study_or_skip(size)) is not None:
                path, n = study
                rows.append(
                    bench_workflow(path, n, runs / f"workflow_{size}", args.cores, interval)
                )
                rows.append(bench_naive(path, n, runs / f"naive_{size}", interval))
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
        return 1
    rows = with_ratios(rows)
    write_outputs(args.out_dir, rows, machine, interval, skipped)
    print(aligned_table(rows))
    print(machine)
    log.info("written %s and %s", args.out_dir / "benchmark.md", args.out_dir / "benchmark.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
