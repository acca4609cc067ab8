"""``ckaad-benchmark``: anomalib's benchmark grids, run side by side with costs and failures nobody can miss.

``anomalib benchmark --config GRID`` writes a failed job's traceback to ``runs/pipeline.log``, leaves the job out of
``results.csv`` and exits 0, so a grid can lose a model without anyone noticing. This runner reads the same grid
files and expands them with anomalib's own grid search; models and datamodules come from anomalib's ``get_model`` /
``get_datamodule`` lookups and each job is anomalib's :class:`~anomalib.pipelines.benchmark.job.BenchmarkJob` with
measurements added (:class:`CkaadBenchmarkJob`). Every failed job, including one whose model or data could not be
built, becomes an ``error`` row that names its settings and the exception; the traceback is logged and the command
exits 1::

    ckaad-benchmark --config configs/benchmark/elpv_mono.yaml --out benchmarks/results/2026-12-04

A grid's ``benchmark`` section may hold, besides anomalib's ``seed``, ``model`` and ``data``:

* ``image_size``: every model sees images of this size. A model with an ``image_size`` argument (Ckaad) gets it;
  a model that takes a ``backbone`` gets a pre-processor that resizes and normalises as the backbone's weights
  expect (the same as Ckaad's); any other model gets its own pre-processor at this size.
* ``max_epochs``: the trainer's epochs (anomalib's job passes none, so a gradient model would train for Lightning's
  1000). Models that fix their own (PaDiM, PatchCore: one pass) keep theirs.
* ``name`` inside a ``model`` or ``data`` entry: the row's label (e.g. ``Recon`` for Ckaad with ``adv_weight: 0``).

With a :class:`~ckaad_anomalib.data.CoarseAnomalyDataModule` as data, models that learn from coarse anomalies
(``uses_coarse_anomalies``: Ckaad, SupersimplenetWeak) train on its batches; every other model trains on the normal
images of the same split (``normal_only``); all see the same validation and test files. The job's seed seeds the
model's construction (initial weights), the split and the coarse draw (unless the data entry sets ``seed``), and
training.

Jobs run one after another on each accelerator of the grid (anomalib's multi-GPU parallel runner is not used). The
table is rewritten after every job, so a stopped grid keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import inspect
import logging
import multiprocessing as mp
import re
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from importlib import import_module
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pandas as pd
import yaml

logger = logging.getLogger(__name__)

GRID_KEYS = ("image_size", "max_epochs")  # this runner's keys of a grid's `benchmark` section
_PEAK_RSS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


class BenchmarkJobsFailedError(RuntimeError):
    """Some jobs of the grid failed; ``failures`` holds their ``error`` rows."""

    def __init__(self, failures: list[dict[str, Any]]) -> None:
        self.failures = failures
        names = "; ".join(f"{describe(row)}: {row['error']}" for row in failures)
        super().__init__(f"{len(failures)} benchmark job(s) failed: {names}")


def describe(row: dict[str, Any]) -> str:
    """A short name of a job from its settings: model (its ``name`` if the grid gives one), data and seed."""
    keys = {
        "model": "model.name" if row.get("model.name") is not None else "model.class_path",
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


def fix_mmap_threshold() -> None:
    """Serve every allocation of 16 MiB or more from its own mapping (glibc), for the rest of the run.

    glibc raises its mmap threshold as large blocks are freed; large blocks then come from the heap, where a few
    small long-lived allocations can split freed blocks so that none can be reused. On this 2-core machine anomalib's
    PatchCore coreset selection (3 071 steps, each a 31 MB temporary, on 120 texture images at 128 px) grew by
    25 MB per step and was killed for memory at 24 GB. With a fixed threshold it stays at 1.0 GB (the selection took
    45 s; 7.5 s on a run whose heap happened not to split). No effect off glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 16 * 1024 * 1024)


def reset_peak_rss() -> bool:
    """Start a new peak-resident-memory window (Linux: ``/proc/self/clear_refs``); False where not possible.

    Garbage of earlier jobs is collected and glibc's free heap handed back to the system first, so that a job's
    window does not start from the high-water mark its predecessors left.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the window starts wherever the heap is
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        _CLEAR_REFS.write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process since :func:`reset_peak_rss`, in MiB (``None`` off Linux)."""
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", _PEAK_RSS.read_text(encoding="ascii"))
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def _job_recorder() -> Any:  # noqa: ANN401 - a Lightning Callback, built on demand (lightning loads lazily)
    from lightning.pytorch import Callback

    class JobRecorder(Callback):
        """Seconds per training step, test throughput, and the raw test outputs the extra metrics need.

        Registered with the trainer, it runs before the model's own callbacks: test timing covers pre-processing
        and the forward pass (not anomalib's post-processing and metrics), and the scores are the raw ones.
        """

        def __init__(self) -> None:
            self.step_s: list[float] = []
            self.test_s = 0.0
            self.scores: list[Any] = []
            self.labels: list[Any] = []
            self.paths: list[str] = []
            self.maps: list[Any] = []
            self.masks: list[Any] = []
            self._start = 0.0

        def on_train_batch_start(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
            del args, kwargs
            self._start = time.perf_counter()

        def on_test_batch_start(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
            del args, kwargs
            self._start = time.perf_counter()

        def on_train_batch_end(self, *args: object) -> None:
            del args
            self.step_s.append(time.perf_counter() - self._start)

        def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: object) -> None:  # noqa: ANN401
            del trainer, pl_module, batch, args
            self.test_s += time.perf_counter() - self._start
            self.scores.append(outputs.pred_score.detach().flatten().cpu().clone())
            self.labels.append(outputs.gt_label.detach().flatten().cpu().clone())
            self.paths += list(outputs.image_path)
            if outputs.gt_mask is not None and outputs.anomaly_map is not None:
                shape = outputs.anomaly_map.shape[-2:]
                self.maps.append(outputs.anomaly_map.detach().reshape(-1, *shape).cpu().clone())
                self.masks.append(outputs.gt_mask.detach().reshape(-1, *outputs.gt_mask.shape[-2:]).cpu().clone())

    return JobRecorder()


def _model_class(class_path: str) -> Any:  # noqa: ANN401 - an AnomalibModule subclass
    """The model class of a grid entry, looked up as anomalib's ``get_model`` does (short name or dotted path)."""
    from anomalib.models import UnknownModelError, _get_model_class_by_name  # type: ignore[attr-defined]

    try:
        if "." in class_path:
            module, _, name = class_path.rpartition(".")
            return getattr(import_module(module), name)
        return _get_model_class_by_name(class_path)  # get_model's own lookup
    except (UnknownModelError, ImportError, AttributeError) as exc:
        msg = (
            f"model class_path {class_path!r} is not a model: give an anomalib model's class name (Padim, Ckaad, "
            "...) or a dotted path to one."
        )
        raise ValueError(msg) from exc


def build_model(model_cfg: dict[str, Any], image_size: int | Sequence[int] | None) -> Any:  # noqa: ANN401
    """Instantiate a grid's model entry; ``image_size`` sets its pre-processing (see the module docstring)."""
    cls = _model_class(model_cfg["class_path"])
    params = inspect.signature(cls).parameters
    init_args = dict(model_cfg.get("init_args") or {})
    if "visualizer" in params:  # images of every test batch cost time and disk, and no table uses them
        init_args.setdefault("visualizer", False)
    if image_size is not None and "image_size" not in init_args and "pre_processor" not in init_args:
        size = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
        if "image_size" in params:
            init_args["image_size"] = size
        elif "backbone" in params:
            from ckaad_anomalib.models.ckaad.lightning_model import Ckaad

            backbone = init_args.get("backbone", params["backbone"].default)
            init_args["pre_processor"] = Ckaad.configure_pre_processor(size, backbone)
        elif "pre_processor" in params:
            init_args["pre_processor"] = cls.configure_pre_processor(image_size=size)
        else:
            msg = f"{cls.__name__} takes neither image_size nor pre_processor: the grid's image_size cannot apply."
            raise ValueError(msg)
    return cls(**init_args)


def build_datamodule(data_cfg: dict[str, Any], model: Any, seed: int) -> Any:  # noqa: ANN401
    """Instantiate a grid's data entry with the job's seed; a coarse datamodule also gets the model's ``normal_only``.

    The seed goes to the datamodule and, for a coarse datamodule, to the one it wraps, so that each seed is one draw
    of the validation split (where the dataset has no fixed one) and of the coarse anomalies, shared by all models.
    """
    from anomalib.data import get_datamodule

    data_cfg = copy.deepcopy(data_cfg)
    data_cfg.pop("name", None)
    init_args = data_cfg.setdefault("init_args", {})
    init_args.setdefault("seed", seed)
    if data_cfg["class_path"].split(".")[-1] == "CoarseAnomalyDataModule":
        init_args.setdefault("normal_only", not getattr(model, "uses_coarse_anomalies", False))
        inner = init_args.get("datamodule")
        if isinstance(inner, dict) and "class_path" in inner:
            inner.setdefault("init_args", {}).setdefault("seed", seed)
    return get_datamodule(data_cfg)


def _benchmark_job_class() -> type:
    """:class:`CkaadBenchmarkJob`, built on first use (anomalib loads lazily: ``--help`` stays fast)."""
    from anomalib.engine import Engine
    from anomalib.pipelines.benchmark.job import BenchmarkJob
    from anomalib.utils.logging import hide_output
    from lightning import seed_everything

    from ckaad_anomalib.evaluation import aupro, defect_kind, per_kind_auroc

    class CkaadBenchmarkJob(BenchmarkJob):
        """anomalib's benchmark job, with epochs, per-kind and pixel metrics, and what the run cost.

        Adds to anomalib's row: ``train_s_per_step`` (median), ``train_steps``, ``test_images_per_s`` (torch, eval
        batch size), ``fit_peak_rss_mb`` / ``test_peak_rss_mb`` (peak resident memory of this process during each
        phase, Linux), ``n_coarse``, ``AUPRO`` where there are masks and per-kind image AUROC where the test set
        has several defect kinds (``seen`` = a kind the coarse anomalies came from).
        """

        def __init__(self, *args: Any, max_epochs: int | None = None, **kwargs: Any) -> None:  # noqa: ANN401
            super().__init__(*args, **kwargs)
            self.max_epochs = max_epochs

        @hide_output
        def run(self, task_id: int | None = None) -> dict[str, Any]:
            """Fit and test; return anomalib's row plus the measurements above."""
            devices: str | list[int] = "auto" if task_id is None else [task_id]
            recorder = _job_recorder()
            job_start = time.perf_counter()
            with TemporaryDirectory() as temp_dir:
                seed_everything(self.seed)
                engine = Engine(
                    accelerator=self.accelerator,
                    devices=devices,
                    default_root_dir=temp_dir,
                    max_epochs=self.max_epochs,
                    callbacks=[recorder],
                    logger=False,
                    enable_progress_bar=False,
                )
                measured = reset_peak_rss()
                fit_start = time.perf_counter()
                engine.fit(self.model, self.datamodule)
                fit_rss = peak_rss_mb() if measured else None
                reset_peak_rss()
                test_start = time.perf_counter()
                test_results = engine.test(self.model, self.datamodule, verbose=False)
                test_rss = peak_rss_mb() if measured else None
            job_end = time.perf_counter()
            return {
                "accelerator": self.accelerator,
                "job_duration": job_end - job_start,
                "fit_duration": test_start - fit_start,
                "test_duration": job_end - test_start,
                "train_s_per_step": statistics.median(recorder.step_s) if recorder.step_s else None,
                "train_steps": len(recorder.step_s),
                "test_images_per_s": len(recorder.paths) / recorder.test_s if recorder.test_s else None,
                "fit_peak_rss_mb": fit_rss,
                "test_peak_rss_mb": test_rss,
                "n_coarse": len(getattr(self.datamodule, "coarse_samples", ())),
                **self.flat_cfg,
                **test_results[0],
                **self._extra_metrics(recorder),
            }

        def _extra_metrics(self, recorder: Any) -> dict[str, float]:  # noqa: ANN401 - the JobRecorder
            import torch

            scores = torch.cat(recorder.scores).numpy()
            labels = torch.cat(recorder.labels).numpy()
            coarse = getattr(self.datamodule, "coarse_samples", None)
            seen = {defect_kind(p) for p in coarse.image_path} if coarse is not None and len(coarse) else None
            out = per_kind_auroc(scores, labels, [defect_kind(p) for p in recorder.paths], seen)
            if recorder.masks:
                out["AUPRO"] = aupro(torch.cat(recorder.maps), torch.cat(recorder.masks))
            return out

    return CkaadBenchmarkJob


def build_job(accelerator: str, settings: dict[str, Any]) -> Any:  # noqa: ANN401 - a CkaadBenchmarkJob
    """One job of an expanded grid: model, datamodule and trainer settings (see the module docstring)."""
    from anomalib.pipelines.components.utils.grid_search import flatten_dict
    from lightning import seed_everything

    # Seeded before the model is built, not only before fit as in anomalib's job: initial weights and random
    # choices made at construction (PaDiM's feature subset, Ckaad's auto-encoder) differ per seed, as they would
    # between users' runs; otherwise every seed of a job would start from the same weights.
    seed_everything(settings["seed"], verbose=False)
    model = build_model(settings["model"], settings.get("image_size"))
    datamodule = build_datamodule(settings["data"], model, settings["seed"])
    return _benchmark_job_class()(
        accelerator=accelerator,
        model=model,
        datamodule=datamodule,
        seed=settings["seed"],
        flat_cfg=job_settings(settings, flatten_dict),
        max_epochs=settings.get("max_epochs"),
    )


def job_settings(settings: dict[str, Any], flatten: Any) -> dict[str, Any]:  # noqa: ANN401 - anomalib's flatten_dict
    """The flat settings of a job as its row shows them; ``model.name`` defaults to the model's class name."""
    flat = flatten(settings)
    flat.setdefault("model.name", str(settings["model"]["class_path"]).split(".")[-1])
    return {key: str(value) if isinstance(value, list | tuple) else value for key, value in flat.items()}


def _job_in_child(accelerator: str, settings: dict[str, Any], pipe: Any) -> None:  # noqa: ANN401 - a Connection
    """Child process: build and run one job; send ``("ok", row)`` or ``("error", message)`` back."""
    try:
        pipe.send(("ok", build_job(accelerator, settings).run()))
    except Exception as exc:  # the parent writes the error row
        logger.exception("Benchmark job failed")
        pipe.send(("error", _message(exc)))
    finally:
        pipe.close()


def run_job(accelerator: str, settings: dict[str, Any]) -> tuple[str, Any]:
    """Run one job in a child process: ``("ok", row)``, or ``("error", message)`` if it raised or died.

    A job that runs out of memory or crashes a native library kills only its process, and becomes an error row
    like any other failure; each job's peak memory starts from a fresh process.
    """
    context: Any = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_job_in_child, args=(accelerator, settings, send))
    child.start()
    send.close()
    try:
        outcome = receive.recv()
    except EOFError:  # the child died without a word
        outcome = None
    child.join()
    if outcome is None:
        code = child.exitcode
        why = f"exit code {code}"
        if code is not None and code < 0:
            why = f"killed by signal {-code}" + (", most often the out-of-memory killer" if -code == 9 else "")
        return "error", f"the job's process died without a result ({why})"
    return outcome


def run_grid(
    accelerator: str, args: dict[str, Any], csvs: Sequence[Path], previous: Sequence[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Run every job of one accelerator's grid, one process each; return its rows (``status`` ``ok``/``error``).

    Each of ``csvs`` is rewritten after every job with ``previous`` rows and this grid's rows so far.
    """
    from anomalib.pipelines.components.utils.grid_search import flatten_dict, get_iterator_from_grid_dict

    rows: list[dict[str, Any]] = []
    grid = list(get_iterator_from_grid_dict(args))
    for number, settings in enumerate(grid, 1):
        status, result = run_job(accelerator, settings)
        if status == "ok":
            rows.append({"status": "ok", **result, "error": ""})
            logger.info(
                "Job %d/%d done (%s): image AUROC %.4f, fit %.0f s",
                number, len(grid), describe(result), result.get("image_AUROC", float("nan")), result["fit_duration"],
            )  # fmt: skip
        else:  # every failure becomes a row; the run fails at the end
            row = {"status": "error", "accelerator": accelerator, **job_settings(settings, flatten_dict)}
            rows.append(row | {"error": result})
            logger.error("Job %d/%d failed (%s): %s", number, len(grid), describe(row), result)
        for csv in csvs:  # rows of different models and datasets may hold different metrics
            pd.DataFrame([*previous, *rows]).to_csv(csv, index=False)
    return rows


def run(config: Path, out: Path | None = None) -> pd.DataFrame:
    """Run the grid of ``config`` (anomalib's benchmark format, plus :data:`GRID_KEYS`) on each accelerator.

    The table goes where anomalib puts it (``runs/benchmark/<time>/results.csv``) and, with ``out``, to
    ``out/<grid name>.csv`` together with the report of every CSV there (:mod:`ckaad_anomalib.benchmark_report`).

    Returns:
        Every job's row.

    Raises:
        BenchmarkJobsFailedError: If any job failed (after all jobs ran and the table was saved).
        ValueError: If the grid has no ``benchmark`` section or an accelerator is neither ``cpu`` nor ``cuda``.
    """
    with config.open(encoding="utf-8") as file:
        grid = yaml.safe_load(file) or {}
    if not isinstance(grid.get("benchmark"), dict):
        msg = f"{config}: no `benchmark:` section with seed, model and data (anomalib's benchmark grid format)."
        raise ValueError(msg)
    accelerators = grid.get("accelerator", "cpu")
    accelerators = accelerators if isinstance(accelerators, list) else [accelerators]
    if unknown := [a for a in accelerators if a not in {"cpu", "cuda"}]:
        msg = f"{config}: accelerator {unknown} is not supported; use cpu or cuda."
        raise ValueError(msg)
    csv = Path("runs") / "benchmark" / datetime.now().strftime("%Y-%m-%d-%H_%M_%S") / "results.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    csvs = [csv]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        csvs.append(out / f"{config.stem}.csv")
    rows: list[dict[str, Any]] = []
    for accelerator in accelerators:
        rows += run_grid(accelerator, grid["benchmark"], csvs, rows)
    logger.info("Saved results to %s", csv)
    table = pd.DataFrame(rows)
    if out is not None:
        from ckaad_anomalib.benchmark_report import write_report

        write_report(out)
    if failures := [row for row in rows if row["status"] == "error"]:
        raise BenchmarkJobsFailedError(failures)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run a grid (exit 1 if any job failed), or only rewrite a results folder's report."""
    parser = argparse.ArgumentParser(prog="ckaad-benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="anomalib benchmark grid (YAML)")
    parser.add_argument("--out", type=Path, help="results folder: <grid>.csv, table.md and plot.png")
    parser.add_argument("--report", action="store_true", help="only rewrite --out's table.md and plot.png")
    args = parser.parse_args(argv)
    if args.report:
        if args.out is None or not args.out.is_dir():
            parser.error(f"--report needs --out, an existing results folder (got {args.out}).")
        from ckaad_anomalib.benchmark_report import write_report

        write_report(args.out)
        return 0
    if args.config is None or not args.config.is_file():
        parser.error(f"--config {args.config}: no such file.")
    fix_mmap_threshold()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logger.setLevel(logging.INFO)  # one line per job; the libraries' INFO chatter stays off
    try:
        run(args.config, args.out)
    except BenchmarkJobsFailedError as exc:
        sys.stderr.write(f"error: {exc}. Each has an error row in runs/benchmark/*/results.csv.\n")
        return 1
    return 0


def _cli() -> None:
    sys.exit(main())
