"""A fork server for snakemake runs from tests: snakemake is imported once, each run forks.

``python -m snakemake`` spends about 2.5 s of CPU importing snakemake and its plugins
before it reads the Snakefile; the tests start it about a hundred times. This server
(started by :mod:`workflow_run`, one per pytest worker thread that needs one) imports
snakemake, its plugin registries and the third-party modules the Snakefile imports, then
reads one request a line from stdin, forks, and in the child runs
``snakemake.cli.main`` exactly as ``python -m snakemake`` would: in the requested working
folder, with the requested environment and argv, stdout and stderr sent to files, stdin
from /dev/null, exiting through the normal interpreter shutdown. It replies with the
child's pid, then with its exit status. Nothing of one run reaches another: each run is
a fresh fork of the untouched server.

Protocol (JSON, one object a line): request ``{"cwd", "args", "env", "stdout",
"stderr"}``; replies ``{"pid": int}`` then ``{"returncode": int}`` (negative: killed by
that signal, as in :mod:`subprocess`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys


def _warm_up() -> None:
    import jsonschema  # noqa: F401 - imported by the Snakefile (workflow_config)
    import pyarrow.parquet  # noqa: F401 - imported by workflow/rules/common.smk
    import snakemake.api  # noqa: F401
    import snakemake.cli
    import snakemake.dag  # noqa: F401
    import snakemake.utils  # noqa: F401
    import snakemake.workflow  # noqa: F401
    import yaml  # noqa: F401

    snakemake.cli.get_argument_parser()  # discovers and imports the plugins


def _child(request: dict) -> None:
    """Become ``python -m snakemake *args`` in ``cwd``; never returns."""
    os.chdir(request["cwd"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, fd)
        os.close(out)
    os.close(null)
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [importlib.util.find_spec("snakemake.__main__").origin, *request["args"]]
    sys.path[0] = os.getcwd()  # what ``python -m`` puts first
    from snakemake.cli import main

    main(request["args"])  # raises SystemExit, which ends this process normally
    sys.exit(0)


def _reply(message: dict) -> None:
    os.write(_REPLY_FD, (json.dumps(message) + "\n").encode())


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        _reply({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _reply({"returncode": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    # replies go to a copy of stdout; the children's fd 1 becomes their own stdout file
    _REPLY_FD = os.dup(1)
    os.set_inheritable(_REPLY_FD, False)
    _warm_up()
    _reply({"ready": True})
    serve()
