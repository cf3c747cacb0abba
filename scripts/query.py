"""Query the metadata tables with DuckDB SQL: views instances, series, errors, slices, volumes.

    python scripts/query.py "SELECT Modality, count(*) FROM instances GROUP BY 1"

The results folder defaults to the one in config/config.yaml. Output is an aligned
table, or CSV / Parquet with ``--format``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import duckdb
import yaml

TABLES = ("instances", "series", "errors", "slices", "volumes")
DEFAULT_CONFIG = Path("config/config.yaml")


def default_results(config_path: Path = DEFAULT_CONFIG) -> Path:
    """The ``results`` folder named in the workflow config, or ``results``."""
    if config_path.is_file():
        with open(config_path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh) or {}
        return Path(config.get("results", "results"))
    return Path("results")


def connect(results: Path) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with one view per metadata table that exists under ``results``."""
    con = duckdb.connect()
    found = 0
    for name in TABLES:
        path = results / "metadata" / f"{name}.parquet"
        if path.is_file():
            literal = str(path).replace("'", "''")
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{literal}')")
            found += 1
    if not found:
        folder = results / "metadata"
        raise FileNotFoundError(f"no metadata tables in {folder}; run snakemake first")
    return con


def run_query(con: duckdb.DuckDBPyConnection, sql: str):
    """Run SQL and return a pandas DataFrame."""
    return con.sql(sql).df()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sql", help="DuckDB SQL over instances, series, errors, slices, volumes")
    parser.add_argument("--results", type=Path, default=None, help="results folder")
    parser.add_argument("--format", choices=("table", "csv", "parquet"), default="table")
    parser.add_argument("--out", type=Path, help="output file (required for parquet)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one query; a bad query prints DuckDB's message on one line and exits 1."""
    args = parse_args(argv)
    results = args.results if args.results is not None else default_results()
    try:
        con = connect(results)
        if args.format == "parquet":
            if args.out is None:
                print("query: --format parquet needs --out FILE", file=sys.stderr)
                return 2
            con.sql(args.sql).write_parquet(str(args.out))
            return 0
        frame = run_query(con, args.sql)
    except (duckdb.Error, FileNotFoundError) as exc:
        print("query: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    if args.format == "csv":
        text = frame.to_csv(index=False)
    else:
        text = frame.to_string(index=False, max_colwidth=60) + "\n"
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
