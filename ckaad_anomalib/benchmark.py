"""``ckaad-benchmark``: anomalib's benchmark pipeline, with failures nobody can miss.

``anomalib benchmark --config GRID`` writes a failed job's traceback to ``runs/pipeline.log``, leaves the job out of
``results.csv`` and exits 0, so a grid can lose a model without anyone noticing. This runner takes the same grid
files and runs the same jobs (anomalib's generator and :class:`~anomalib.pipelines.benchmark.job.BenchmarkJob`),
but every failed job becomes an ``error`` row of ``results.csv`` that names its settings and the exception, the
traceback is logged, and the command exits 1::

    ckaad-benchmark --config configs/benchmark/elpv_mono.yaml

Jobs run one after another on each accelerator of the grid (anomalib's multi-GPU parallel runner is not used).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

logger = logging.getLogger(__name__)


class BenchmarkJobsFailedError(RuntimeError):
    """Some jobs of the grid failed; ``failures`` holds their ``error`` rows."""

    def __init__(self, failures: list[dict[str, Any]]) -> None:
        self.failures = failures
        names = "; ".join(f"{describe(row)}: {row['error']}" for row in failures)
        super().__init__(f"{len(failures)} benchmark job(s) failed: {names}")


def describe(row: dict[str, Any]) -> str:
    """A short name of a job from its settings: model, data and seed."""
    keys = {
        "model": "model.class_path",
        "data": "data.class_path",
        "category": "data.init_args.category",
        "module_type": "data.init_args.module_type",
        "seed": "seed",
    }
    return ", ".join(f"{name}={row[key]}" for name, key in keys.items() if row.get(key) is not None)


def _message(exc: BaseException) -> str:
    """``Type: message`` of the original error (anomalib's ``hide_output`` wraps it in a LoggerRedirectError)."""
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}".splitlines()[0]


def run_jobs(generator: Any, args: dict[str, Any]) -> pd.DataFrame:  # noqa: ANN401 - anomalib's JobGenerator
    """Run every job of ``generator`` for ``args``; one row per job, ``status`` ``ok`` or ``error``.

    The table is saved where anomalib saves it (``runs/benchmark/<time>/results.csv``) before any failure is raised.

    Raises:
        BenchmarkJobsFailedError: If any job failed.
    """
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    jobs = iter(generator(args, None))
    while True:
        try:  # the generator builds each job's model and datamodule: a bad setting fails here
            job = next(jobs)
        except StopIteration:
            break
        except Exception as exc:  # a generator that raised is finished: record it, stop
            logger.exception("Could not build the next benchmark job")
            failures.append({"status": "error", "error": f"building the next job: {_message(exc)}"})
            break
        try:
            rows.append({"status": "ok", **job.run(), "error": ""})
        except Exception as exc:  # every failure becomes a row; the run fails below
            row = {"status": "error", "seed": job.seed, **job.flat_cfg, "error": _message(exc)}
            logger.exception("Benchmark job failed (%s)", describe(row))
            failures.append(row)
    table = pd.DataFrame(rows + failures)  # rows of different datasets may hold different metrics
    generator.job_class.save(table)
    if failures:
        raise BenchmarkJobsFailedError(failures)
    return table


def run(config: Path) -> pd.DataFrame:
    """Run the grid of ``config`` (anomalib's benchmark format) on each of its accelerators.

    Returns:
        Every job's row (of the last accelerator, as anomalib's pipeline).

    Raises:
        BenchmarkJobsFailedError: If any job failed (after all jobs ran and the table was saved).
        ValueError: If an accelerator is neither ``cpu`` nor ``cuda``.
    """
    from anomalib.pipelines.benchmark.generator import BenchmarkJobGenerator
    from anomalib.pipelines.benchmark.job import BenchmarkJob

    with config.open(encoding="utf-8") as file:
        grid = yaml.safe_load(file)
    accelerators = grid["accelerator"] if isinstance(grid["accelerator"], list) else [grid["accelerator"]]
    if unknown := [a for a in accelerators if a not in {"cpu", "cuda"}]:
        msg = f"{config}: accelerator {unknown} is not supported; use cpu or cuda."
        raise ValueError(msg)
    failures: list[dict[str, Any]] = []
    table = pd.DataFrame()
    for accelerator in accelerators:
        generator = BenchmarkJobGenerator(accelerator)
        try:
            table = run_jobs(generator, grid.get(BenchmarkJob.name) or {})
        except BenchmarkJobsFailedError as exc:
            failures += exc.failures
    if failures:
        raise BenchmarkJobsFailedError(failures)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run a grid; exit 1 if any job failed."""
    parser = argparse.ArgumentParser(prog="ckaad-benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="anomalib benchmark grid (YAML)")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file.")
    try:
        run(args.config)
    except BenchmarkJobsFailedError as exc:
        sys.stderr.write(f"error: {exc}. Each has an error row in runs/benchmark/*/results.csv.\n")
        return 1
    return 0


def _cli() -> None:
    sys.exit(main())
