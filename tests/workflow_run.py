"""Running the workflow from tests: a helper and a shared demo run."""

from __future__ import annotations

import atexit
import hashlib
import json
import locale
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import demo

ROOT = demo.ROOT
CONFIG = ROOT / "config" / "config.yaml"


def snakemake(
    cwd: Path, *args: str, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run snakemake from this interpreter's environment, with the repo's Snakefile and config.

    The run is ``python -m snakemake ...`` in ``cwd``; it is forked from a server that has
    snakemake imported already (:mod:`snakemake_server`), which saves about 2.5 s of CPU a
    run. ``DSP_TESTS_PLAIN_SNAKEMAKE=1`` starts each run as a new interpreter instead.
    """
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = dict(os.environ, PATH=path, **(env or {}))
    args = ("-s", str(ROOT / "Snakefile"), "--configfile", str(CONFIG), *args)
    if os.environ.get("DSP_TESTS_PLAIN_SNAKEMAKE"):
        cmd = [sys.executable, "-m", "snakemake", *args]
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    else:
        proc = _forked_snakemake(Path(cwd), list(args), env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


class _Server:
    """One :mod:`snakemake_server` process; serves one run at a time."""

    def __init__(self):
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - the server's own stderr, kept
        self.buffer = b""
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("snakemake_server.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        assert self._read(600) == {"ready": True}

    def _read(self, timeout: float) -> dict:
        """The next reply line, unbuffered: a second reply may already be in the pipe."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                self.log.seek(0)
                why = "timed out" if not ready else "exited"
                raise RuntimeError(f"snakemake_server {why}:\n{self.log.read()[-4000:]!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, cwd: Path, args: list[str], env: dict, timeout: float) -> tuple[int, str, str]:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
            request = {"cwd": str(cwd), "args": args, "env": env}
            request |= {"stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            pid = self._read(60)["pid"]
            try:
                returncode = self._read(timeout)["returncode"]
            except RuntimeError:
                os.kill(pid, signal.SIGKILL)
                raise
            encoding = locale.getpreferredencoding(False)  # as subprocess.run(text=True)
            texts = [p.read_text(encoding=encoding) if p.exists() else "" for p in (out, err)]
        return returncode, *texts

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_idle: list[_Server] = []
_lock = threading.Lock()


def _forked_snakemake(cwd: Path, args: list[str], env: dict, timeout: float):
    """``python -m snakemake *args`` in ``cwd``, forked from an idle server (one is started
    when none is idle: threads running snakemake side by side each get their own)."""
    with _lock:
        server = _idle.pop() if _idle else None
    if server is None:
        server = _Server()
        atexit.register(server.close)
    returncode, stdout, stderr = server.run(cwd, args, env, timeout)
    with _lock:
        _idle.append(server)
    cmd = [sys.executable, "-m", "snakemake", *args]
    return subprocess.CompletedProcess(cmd, returncode, stdout, stderr)


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under a folder, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_demo(tmp_path_factory):
    """One full run of the workflow on a copy of the demo study; returns (cwd, results, log)."""
    cwd = tmp_path_factory.mktemp("workflow")
    study = cwd / "study"
    shutil.copytree(demo.STUDY, study)
    before = tree_digest(study)
    proc = snakemake(cwd, "--cores", "2", "--config", "study=study", "results=results")
    assert tree_digest(study) == before, "the workflow wrote into or changed the study folder"
    return cwd, cwd / "results", proc.stderr
