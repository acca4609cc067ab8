r"""Which anomalib image models can join the side-by-side benchmark on this machine (offline, 2 CPU cores)?

Each image model of ``anomalib.models.list_models()`` is built as ``ckaad-benchmark`` builds it, with the grids'
backbone (``tf_efficientnet_lite0``, offline ImageNet weights from ``ckaad-weights``) where it takes a ``backbone``,
then fitted for one epoch of two batches and tested on a tiny generated texture set (128 px), in a child process
with a time limit. A model that fails on lite0 is tried again with its own defaults, to show whether it could run
here at all (a model that needs weights from a hub fails on the download). Prints one line per model: ``ok`` with the
seconds it took, or the first line of the error. Video models and those needing an API are listed as such.

    HF_HUB_OFFLINE=1 python benchmarks/probe_peers.py --out benchmarks/results/peers_probe.md
"""

from __future__ import annotations

import argparse
import inspect
import multiprocessing as mp
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

LITE0 = "tf_efficientnet_lite0"
LITE0_LAYERS = ["blocks.2", "blocks.4"]  # mid-level stages (stride 8 and 16), as the benchmark grids use
# init_args beyond backbone/layers that a model needs to run on lite0 at 128 px (as in configs/benchmark/)
LITE0_ARGS: dict[str, dict[str, Any]] = {
    "Padim": {"n_features": 100},
    "Dfkde": {"layers": ["blocks.4"]},
    "Dfm": {"layer": "blocks.4"},
    "Fre": {"layer": "blocks.4", "input_dim": 1792},
    "Patchflow": {"layers": None},
}
VIDEO_OR_API = {"AiVad": "video model", "Fuvas": "video model", "VlmAd": "needs a vision-language API or Ollama"}


def model_entry(name: str, lite0: bool) -> dict[str, Any]:
    """The grid entry of ``name``: on lite0 (with :data:`LITE0_ARGS`) or with the model's own defaults."""
    from anomalib.models import _get_model_class_by_name  # type: ignore[attr-defined]

    params = inspect.signature(_get_model_class_by_name(name).__init__).parameters
    init_args: dict[str, Any] = {}
    if lite0 and "backbone" in params:
        init_args = {"backbone": LITE0} | ({"layers": LITE0_LAYERS} if "layers" in params else {})
        init_args = {k: v for k, v in (init_args | LITE0_ARGS.get(name, {})).items() if v is not None}
    return {"class_path": name, "init_args": init_args}


def _probe(entry: dict[str, Any], root: str, queue: Any) -> None:  # noqa: ANN401 - multiprocessing queue
    """Child process: build as the benchmark does, fit one epoch of two batches, test; put the outcome on queue."""
    try:
        import logging

        from anomalib.data import MVTecAD
        from anomalib.engine import Engine

        from ckaad_anomalib import install_lite0_weights
        from ckaad_anomalib.benchmark import build_model

        logging.disable(logging.WARNING)
        install_lite0_weights()
        start = time.perf_counter()
        model = build_model(entry, 128)
        datamodule = MVTecAD(root=root, category="brick", train_batch_size=4, eval_batch_size=4, num_workers=0)
        with tempfile.TemporaryDirectory() as work:
            engine = Engine(
                default_root_dir=work, max_epochs=1, limit_train_batches=2, accelerator="cpu", logger=False,
                enable_progress_bar=False,
            )  # fmt: skip
            engine.fit(model, datamodule=datamodule)
            engine.test(model, datamodule=datamodule, verbose=False)
        queue.put(("ok", f"{time.perf_counter() - start:.0f} s"))
    except BaseException as exc:  # noqa: BLE001 - every failure is the answer
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        line = f"{type(cause).__name__}: {cause}".splitlines()[0][:160]
        where = traceback.extract_tb(cause.__traceback__)[-1] if cause.__traceback__ else None
        queue.put(("fails", f"{line} ({Path(where.filename).name}:{where.lineno})" if where else line))


def probe(entry: dict[str, Any], root: str, timeout: float) -> tuple[str, str]:
    """Run :func:`_probe` in a child process with a time limit (a hub download may hang, a library may crash)."""
    context = mp.get_context("spawn")
    queue: Any = context.Queue()
    child = context.Process(target=_probe, args=(entry, root, queue))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        return "fails", f"did not finish in {timeout:.0f} s"
    return queue.get() if not queue.empty() else ("fails", f"child exited with code {child.exitcode}")


def main() -> None:
    """Probe every anomalib image model; print and optionally write a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="class names (default: every image model)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per model")
    parser.add_argument("--out", type=Path, default=None, help="write the table here (Markdown)")
    args = parser.parse_args()

    from anomalib.models import _get_model_class_by_name, list_models  # type: ignore[attr-defined]

    from ckaad_anomalib.data import make_mvtec_like_dataset

    names = args.models or sorted({_get_model_class_by_name(n).__name__ for n in list_models()})
    del names[names.index("Ckaad")]  # the model under test
    rows = []
    with tempfile.TemporaryDirectory() as root:
        make_mvtec_like_dataset(root, "brick", n_train=8, n_test_good=4, n_test_defect=2, image_size=128)
        for name in names:
            if name in VIDEO_OR_API:
                rows.append((name, "left out", VIDEO_OR_API[name]))
            else:
                status, detail = probe(model_entry(name, lite0=True), root, args.timeout)
                if status != "ok" and model_entry(name, lite0=False) != model_entry(name, lite0=True):
                    own = probe(model_entry(name, lite0=False), root, args.timeout)  # why not with its own backbone?
                    status, detail = own[0], f"on lite0: {detail}; own backbone: {own[1]}"
                rows.append((name, status, detail))
            print(" | ".join(rows[-1]), flush=True)
    table = "| model | offline, 2 CPU cores | detail |\n|---|---|---|\n" + "\n".join(
        f"| {name} | {status} | {detail.replace('|', '/')} |" for name, status, detail in rows
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"Probe: {LITE0} {LITE0_LAYERS} where a model takes a backbone (else, and where lite0 fails, the "
            "model's own defaults), built by ckaad-benchmark's build_model at 128 px, 1 epoch of 2 batches.\n\n"
            f"{table}\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
