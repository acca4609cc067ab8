"""Inference speed of deployed CKAAD vs the frozen backbone alone (the floor), per runtime, on CPU.

For each backbone, it measures two graphs with the same runtime. The deployed CKAAD pipeline is pre-processing +
extractor + auto-encoder + map/score + post-processing (what `anomalib export` ships; the discriminator is not in
it). The backbone-only graph is the same frozen extractor on the same 256×256 input: the cost CKAAD cannot go
below. The runtimes are torch eager, OpenVINO FP32 (f32 precision hint: the CPU plugin would otherwise run bf16)
and OpenVINO INT8 (NNCF post-training quantisation of the feature convolutions, calibrated on normal images, as
Ckaad's INT8 export does).
Models are untrained (speed does not depend on weight values). ResNet-18 uses random weights, so that it runs
offline.

``--slim 0.5:1`` adds Ckaad with ``ae_width=0.5, ae_blocks=1`` (and so on); ``--configs`` adds Ckaad with an
anomalib config's model settings (its memory banks filled from random images, see :func:`from_config`).
``--peers`` adds the anomalib models a user would deploy instead, on the same backbone, input size and
pre-processing, exported the same way: ``Stfpm``, ``Padim`` (100 features, as anomalib's ResNet-18 default),
``Patchcore`` (a memory bank of 16384 rows, the size of Ckaad's nearest-feature bank; its coreset of a real dataset
can be larger or smaller) and ``ReverseDistillation`` (ResNet backbones only: anomalib has no decoder for lite0).
Memory bank and Gaussian are filled from random images (values do not change the speed). Their INT8 is NNCF's
default quantisation of the whole graph, as anomalib's ``INT8_PTQ`` export does; Ckaad's INT8 quantises only its
feature convolutions.

    python benchmarks/inference_speed.py                # both backbones, batch 1 and 8
    python benchmarks/inference_speed.py --iters 50 --backbones tf_efficientnet_lite0
    python benchmarks/inference_speed.py --peers --batches 1 --iters 50
    python benchmarks/inference_speed.py --backbones tf_efficientnet_lite0 --batches 1 --size 128 --slim 0.5 0.25:1
    python benchmarks/inference_speed.py --backbones tf_efficientnet_lite0 --batches 1 --size 128 \
        --configs configs/ckaad_texture_lite0_coarse_knn_fine_coreset.yaml

Prints images/s, p50/p95 latency per batch, the CKAAD / backbone latency ratio, the issue's targets and (with
``--peers``) each peer's latency beside Ckaad's. The graphs of one runtime are timed in turns (one call each per
round, :func:`measure_interleaved`), so that their ratios do not carry the machine's drift between minutes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import nncf
import numpy as np
import openvino as ov
import torch
from anomalib.models import Padim, Patchcore, ReverseDistillation, Stfpm
from anomalib.models.components import AnomalibModule, TimmFeatureExtractor
from anomalib.models.image.stfpm import torch_model as stfpm_torch
from torch import nn

from ckaad_anomalib import Ckaad, install_lite0_weights
from ckaad_anomalib.models.ckaad.export import int8_ignored_ops

BACKBONES = {
    "tf_efficientnet_lite0": ("blocks.1", "blocks.2", "blocks.4"),
    "resnet18": ("layer2", "layer3"),
}
SIZE = 256
CORE = ov.Core()
RUNTIMES = ("torch eager", "OpenVINO FP32", "OpenVINO INT8")


class Pipeline(nn.Module):
    """The deployed graph: AnomalibModule.forward (pre-processing, model, post-processing) as plain tensors."""

    def __init__(self, model: AnomalibModule) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pred_score, anomaly_map)."""
        out = self.model(images)
        return out.pred_score, out.anomaly_map


class Backbone(nn.Module):
    """The frozen extractor alone, on the same input (normalisation included, like the pipeline)."""

    def __init__(self, model: Ckaad) -> None:
        super().__init__()
        self.normalize = model.pre_processor.export_transform  # type: ignore[union-attr]
        self.extractor = model.model.extractor

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the stage features."""
        return tuple(self.extractor(self.normalize(images)).values())


def cpu_name() -> str:
    """The CPU model, for the table header."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def measure(run: Callable[[np.ndarray], object], batch: np.ndarray, iters: int, warmup: int) -> dict[str, float]:
    """Latency statistics of ``run(batch)`` over ``iters`` timed calls after ``warmup`` untimed ones."""
    return measure_interleaved({"run": run}, batch, iters, warmup)["run"]


def measure_interleaved(
    runs: dict[str, Callable[[np.ndarray], object]], batch: np.ndarray, iters: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Latency statistics of each of ``runs`` on ``batch``, timed in turns: each round calls every run once.

    On this shared 2-core VM the speed of the machine drifts by up to ~1.9× between minutes; timed one after the
    other, two graphs' ratio carries that drift, timed in turns it does not.
    """
    for _ in range(warmup):
        for run in runs.values():
            run(batch)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(iters):
        for name, run in runs.items():
            start = time.perf_counter()
            run(batch)
            times[name].append(time.perf_counter() - start)
    stats = {}
    for name, taken in times.items():
        taken.sort()
        p95 = taken[min(len(taken) - 1, round(0.95 * (len(taken) - 1)))]
        stats[name] = {
            "ips": len(batch) / statistics.mean(taken),
            "p50_ms": 1e3 * statistics.median(taken),
            "p95_ms": 1e3 * p95,
        }
    return stats


def build_ckaad(backbone: str, size: int, **kwargs: Any) -> Ckaad:  # noqa: ANN401
    """An untrained Ckaad at ``size``² in eval mode (lite0 with its offline ImageNet weights, ResNet-18 random)."""
    pre_trained = backbone == "tf_efficientnet_lite0"
    model = Ckaad(backbone=backbone, layers=BACKBONES[backbone], pre_trained=pre_trained, image_size=(size, size),
                  visualizer=False, **kwargs)  # fmt: skip
    return model.eval()


def slim_options(spec: str) -> dict[str, Any]:
    """``ae_width`` / ``ae_blocks`` of a ``WIDTH[:BLOCKS]`` spec (``--slim``)."""
    width, _, blocks = spec.partition(":")
    return {"ae_width": float(width), "ae_blocks": int(blocks) if blocks else None}


def from_config(path: Path, backbone: str, size: int) -> Ckaad | None:
    """Ckaad with the ``model.init_args`` of an anomalib config at ``size``², banks filled, in eval mode.

    ``None`` if the config's backbone is not ``backbone``. The memory banks are filled from embeddings of random
    images (their values do not change the speed, their sizes do): the normal bank from 8 images, through the
    config's sampling; the coarse bank with ``coarse_fraction`` of the positions of 20 images, about the 19-29
    coarse anomalies of an ELPV run.
    """
    import yaml

    init_args = dict(yaml.safe_load(path.read_text())["model"]["init_args"])
    if init_args.pop("backbone", None) != backbone:
        return None
    init_args.pop("layers", None)
    init_args.pop("image_size", None)
    model = build_ckaad(backbone, size, **init_args)
    torch_model = model.model
    with torch.no_grad():
        features = torch_model.extract(model.pre_processor.export_transform(torch.rand(28, 3, size, size)))
        if torch_model.nearest is not None:
            torch_model.nearest.set_memory_bank(torch_model.nearest.patches([f[:8] for f in features]))
        if torch_model.coarse is not None:
            rows = torch_model.coarse.patches([f[8:] for f in features])
            keep = max(1, round(torch_model.coarse_fraction * rows.shape[1]))
            torch_model.coarse.set_memory_bank(rows[:, :keep])
    return model


def _random_weights_extractor(*args: object, **kwargs: object) -> TimmFeatureExtractor:
    return TimmFeatureExtractor(*args, **{**kwargs, "pre_trained": False})  # type: ignore[arg-type]


def peers(backbone: str, size: int) -> dict[str, AnomalibModule]:
    """Anomalib's models on ``backbone`` with Ckaad's pre-processing, ready to score (bank / Gaussian filled)."""
    pre_trained = backbone == "tf_efficientnet_lite0"
    common = {"pre_trained": pre_trained, "visualizer": False, "evaluator": False}
    layers = BACKBONES[backbone]
    # Stfpm always loads an ImageNet teacher; offline (ResNet-18) it gets random weights like every other model here
    extractor = TimmFeatureExtractor if pre_trained else _random_weights_extractor
    with mock.patch.object(stfpm_torch, "TimmFeatureExtractor", extractor):
        stfpm = Stfpm(backbone=backbone, layers=layers, visualizer=False, evaluator=False)
    models: dict[str, AnomalibModule] = {
        "stfpm": stfpm,
        "padim": Padim(backbone=backbone, layers=layers[-2:], n_features=100, **common),
        "patchcore": Patchcore(backbone=backbone, layers=layers[-2:], **common),
    }
    if backbone.startswith(("resnet", "wide_resnet")):
        # its bottleneck and decoder are built for layer1..3 of a ResNet
        rd_layers = ("layer1", "layer2", "layer3")
        models["reverse_distillation"] = ReverseDistillation(backbone=backbone, layers=rd_layers, **common)
    images = torch.rand(2, 3, size, size)
    with torch.no_grad():
        for model in models.values():
            model.pre_processor = Ckaad.configure_pre_processor((size, size), backbone)
            if isinstance(model, Patchcore | Padim):
                model.model.train()
                embedding = model.model(images)
            if isinstance(model, Patchcore):  # (positions, D) rows
                rows = embedding[torch.randint(len(embedding), (16384,))]
                model.model.memory_bank = rows + 0.01 * torch.randn_like(rows)
            elif isinstance(model, Padim):  # (N, C, H, W): mean and inverse covariance per position
                flat = embedding.flatten(2)
                model.model.gaussian.mean = flat.mean(0)
                eye = torch.eye(flat.shape[1]).expand(flat.shape[2], -1, -1)
                model.model.gaussian.inv_covariance = eye.clone()
                model.model.memory_bank = []
            model.eval()
    return models


def compiles(model: ov.Model, workdir: Path) -> bool:
    """Whether OpenVINO's CPU plugin compiles ``model`` without crashing, tried in a child process.

    Compiling anomalib's Padim after NNCF's whole-graph INT8 quantisation, calibrated on ELPV cells, segfaulted in
    ``compile_model`` (OpenVINO 2026.4.1, twice; with random calibration images it compiled).
    """
    path = workdir / f"probe_{id(model)}.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)
    code = (
        f"import openvino as ov; ov.Core().compile_model({str(path)!r}, 'CPU', {{'INFERENCE_PRECISION_HINT': 'f32'}})"
    )
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True).returncode == 0


def openvino_runner(
    module: nn.Module,
    batch_size: int,
    calibration: np.ndarray | None,
    workdir: Path,
    size: int,
    whole_graph: bool = False,
) -> Callable[[np.ndarray], object] | None:
    """Export ``module`` through ONNX to OpenVINO (as `anomalib export` does), optionally INT8 (NNCF), compile f32.

    INT8 quantises Ckaad's feature convolutions only (its export's rule), or ``whole_graph`` (anomalib's default).
    Returns ``None`` if the INT8 model crashes OpenVINO's compiler (:func:`compiles`).
    """
    onnx_path = workdir / f"{id(module)}_{batch_size}.onnx"
    if not onnx_path.exists():
        torch.onnx.export(
            module, (torch.rand(batch_size, 3, size, size),), str(onnx_path), dynamo=True, opset_version=18
        )
    model = ov.convert_model(str(onnx_path))
    if calibration is not None:
        samples = [calibration[i : i + batch_size] for i in range(0, len(calibration) - batch_size + 1, batch_size)]
        ignored = None if whole_graph else nncf.IgnoredScope(names=int8_ignored_ops(model), validate=False)
        model = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), ignored_scope=ignored)
        if not compiles(model, workdir):
            return None
    compiled = CORE.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def calibration_images(count: int, size: int) -> np.ndarray:
    """Normal ELPV cells (functional, mono) resized to ``size``, as [0, 1] RGB, for INT8 calibration."""
    from PIL import Image

    from ckaad_anomalib.data import ELPV

    datamodule = ELPV(module_type="mono", num_workers=0)
    datamodule.setup("fit")
    paths = list(datamodule.train_data.samples.image_path)[:count]
    images = [
        np.asarray(Image.open(p).convert("RGB").resize((size, size)), dtype=np.float32).transpose(2, 0, 1) / 255
        for p in paths
    ]
    return np.stack(images)


def report(rows: list[dict], backbones: list[str], batches: list[int]) -> None:
    """Print the Ckaad table, the peers' table and the targets."""
    print(
        f"\nCPU: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}, OpenVINO {ov.__version__}"
    )
    print(f"{'backbone':22s} {'batch':>5s} {'runtime':14s} {'img/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} "
          f"{'backbone img/s':>14s} {'latency ×floor':>15s}")  # fmt: skip
    index = {(r["backbone"], r["batch"], r["graph"], r["runtime"]): r for r in rows}
    for (backbone, batch_size, graph, runtime), row in index.items():
        if graph != "ckaad":
            continue
        floor = index[(backbone, batch_size, "backbone", runtime)]
        print(f"{backbone:22s} {batch_size:5d} {runtime:14s} {row['ips']:8.1f} {row['p50_ms']:8.1f} "
              f"{row['p95_ms']:8.1f} {floor['ips']:14.1f} {row['p50_ms'] / floor['p50_ms']:15.2f}")  # fmt: skip

    if any(r["graph"] not in {"ckaad", "backbone"} for r in rows):
        print("\nPeers and slim Ckaads (same backbone, size, pre-processing, runtime; ×Ckaad = p50 / Ckaad p50):")
        width = max(20, *(len(r["graph"]) for r in rows))
        print(f"{'backbone':22s} {'batch':>5s} {'model':{width}s} {'runtime':14s} {'img/s':>8s} {'p50 ms':>8s} "
              f"{'×Ckaad':>7s} {'×backbone':>9s}")  # fmt: skip
        for (backbone, batch_size, graph, runtime), row in index.items():
            if graph == "backbone":
                continue
            ckaad = index[(backbone, batch_size, "ckaad", runtime)]
            floor = index[(backbone, batch_size, "backbone", runtime)]
            print(f"{backbone:22s} {batch_size:5d} {graph:{width}s} {runtime:14s} {row['ips']:8.1f} "
                  f"{row['p50_ms']:8.2f} {row['p50_ms'] / ckaad['p50_ms']:7.2f} "
                  f"{row['p50_ms'] / floor['p50_ms']:9.2f}")  # fmt: skip

    print("\nTargets (batch 1):")
    for backbone in backbones:
        if 1 not in batches:
            break
        eager, fp32, int8 = (index[(backbone, 1, "ckaad", r)] for r in RUNTIMES)
        floor32 = index[(backbone, 1, "backbone", "OpenVINO FP32")]
        checks = [
            ("OpenVINO FP32 >= 2x torch eager img/s", fp32["ips"] / eager["ips"], 2.0),
            ("CKAAD latency <= 1.5x backbone (OV FP32)", fp32["p50_ms"] / floor32["p50_ms"], 1.5),
            ("INT8 >= 1.5x FP32 img/s", int8["ips"] / fp32["ips"], 1.5),
        ]
        for text, value, target in checks:
            ok = value <= target if "<=" in text else value >= target
            print(f"  {backbone:22s} {text:42s} measured {value:5.2f}  {'met' if ok else 'MISSED'}")


def main() -> None:
    """Run the grid and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=64, help="normal images for INT8 calibration")
    parser.add_argument("--size", type=int, default=SIZE, help="input side in pixels (default 256)")
    parser.add_argument("--peers", action="store_true", help="also anomalib's Stfpm, Padim, Patchcore, RD")
    parser.add_argument(
        "--slim", nargs="*", default=[], metavar="WIDTH[:BLOCKS]", help="also Ckaad with ae_width / ae_blocks"
    )
    parser.add_argument(
        "--configs", nargs="*", type=Path, default=[], help="also Ckaad with these anomalib configs' model settings"
    )
    args = parser.parse_args()
    install_lite0_weights()
    calibration = calibration_images(args.calibration, args.size)
    workdir = Path(tempfile.mkdtemp(prefix="ckaad_speed_"))
    rows = []
    for backbone in args.backbones:
        model = build_ckaad(backbone, args.size)
        graphs = {"ckaad": Pipeline(model).eval(), "backbone": Backbone(model).eval()}
        if args.peers:
            graphs |= {name: Pipeline(peer).eval() for name, peer in peers(backbone, args.size).items()}
        for spec in args.slim:
            width, _, blocks = spec.partition(":")
            slim = build_ckaad(backbone, args.size, **slim_options(spec))
            graphs[f"ckaad_w{width}_b{blocks or 'paper'}"] = Pipeline(slim).eval()
        for config in args.configs:
            configured = from_config(config, backbone, args.size)
            if configured is not None:
                graphs[config.stem.removeprefix("ckaad_")] = Pipeline(configured).eval()
        with model.model.inference_only():
            for batch_size in args.batches:
                batch = np.random.default_rng(0).random((batch_size, 3, args.size, args.size), dtype=np.float32)
                runners: dict[tuple[str, str], Callable[[np.ndarray], object] | None] = {}
                for name, graph in graphs.items():

                    def eager(x: np.ndarray, graph: nn.Module = graph) -> object:
                        with torch.inference_mode():
                            return graph(torch.from_numpy(x))

                    runners[name, "torch eager"] = eager
                    runners[name, "OpenVINO FP32"] = openvino_runner(graph, batch_size, None, workdir, args.size)
                    whole = name not in {"ckaad", "backbone"}
                    runners[name, "OpenVINO INT8"] = openvino_runner(
                        graph, batch_size, calibration, workdir, args.size, whole
                    )
                for (name, runtime), run in runners.items():
                    if run is None:
                        print(f"{backbone} b{batch_size} {name:20s} {runtime:14s} not measured: compiling crashed")
                for runtime in RUNTIMES:  # every graph of one runtime timed in turns, so their ratios share a period
                    runs = {name: run for (name, rt), run in runners.items() if rt == runtime and run is not None}
                    for name, stats in measure_interleaved(runs, batch, args.iters, args.warmup).items():
                        rows.append(
                            {"backbone": backbone, "batch": batch_size, "graph": name, "runtime": runtime, **stats}
                        )
                        print(
                            f"{backbone} b{batch_size} {name:20s} {runtime:14s} {stats['ips']:8.1f} img/s", flush=True
                        )

    report(rows, args.backbones, args.batches)


if __name__ == "__main__":
    main()
