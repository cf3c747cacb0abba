"""Check a workflow config before any job runs, so a mistake costs one clear line.

workflow/rules/common.smk calls these checks; each problem names the key, the value
and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path

import jsonschema
import yaml


def schema_problem(config: dict, schema_path: str | os.PathLike) -> str | None:
    """First schema violation as ``config key 'a.b': message``, or None when valid."""
    with open(schema_path, encoding="utf-8") as fh:
        schema = yaml.safe_load(fh)
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return None
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"config key '{where}': {error.message}"


def paths_problem(study: str, results: str) -> str | None:
    """Refuse a missing study folder and a results folder inside the study (input is read-only)."""
    study_path = Path(study)
    if not study_path.exists():
        return f"study folder not found: {study}"
    if not study_path.is_dir():
        return f"study is not a folder: {study}"
    study_real = study_path.resolve()
    results_real = Path(results).resolve()
    if results_real == study_real or study_real in results_real.parents:
        return f"results folder {results} is inside the study folder {study}; choose another"
    return writable_problem(Path(results))


def writable_problem(results: Path) -> str | None:
    """Refuse a results folder that cannot be created or written, before any job starts."""
    try:
        results.mkdir(parents=True, exist_ok=True)
        probe = results / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return f"results folder {results} is not writable: {reason}"
    return None
