"""Where does deployed CKAAD spend its time? Cumulative stages of the shipped pipeline, OpenVINO FP32, batch 1, CPU.

Each graph is a prefix of the deployed pipeline, built from the shipped modules (the exact ops included):

1. ``backbone``: pre-processing (exported resize + normalisation) and the frozen extractor;
2. ``+ auto-encoder``: the reconstructions;
3. ``+ distance maps``: per-stage ``1 − cos`` at the stages' resolutions;
4. ``+ upsample, sum``: the maps resized to the input and summed;
5. ``+ blur``: the anomaly map (separable Gaussian, σ = 4);
6. ``+ score``: the torch model's ``InferenceBatch`` (top-k image score);
7. ``pipeline``: what ``anomalib export`` ships (post-processing's normalisation and thresholds too).

All are exported through ONNX like ``anomalib export``, compiled with the f32 hint, and timed in turns (one call
each per round, :func:`inference_speed.measure_interleaved`), so that the differences between consecutive
prefixes (each stage's cost) come from the same minutes. ``--slim`` profiles a slimmer auto-encoder, ``--size``
another input side.

    python benchmarks/profile_inference.py --size 128 --slim 0.5 --iters 300
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from inference_speed import (
    BACKBONES,
    SIZE,
    Backbone,
    Pipeline,
    build_ckaad,
    measure_interleaved,
    openvino_runner,
    slim_options,
)
from torch import nn

from ckaad_anomalib import Ckaad, install_lite0_weights
from ckaad_anomalib.models.ckaad.anomaly_map import distance_maps

STAGES = ("backbone", "+ auto-encoder", "+ distance maps", "+ upsample, sum", "+ blur", "+ score", "pipeline")


class Prefix(nn.Module):
    """The deployed Ckaad up to (and including) stage ``depth`` of :data:`STAGES` (1-based, 2 to 6)."""

    def __init__(self, model: Ckaad, depth: int) -> None:
        super().__init__()
        self.backbone = Backbone(model)
        self.model = model.model
        self.depth = depth
        self.no_blur = copy.deepcopy(model.model.anomaly_map_generator)
        self.no_blur.blur = nn.Identity()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the last stage's outputs."""
        features = list(self.backbone(images))
        reconstructions = self.model.autoencoder(features)
        if self.depth == 2:
            return tuple(reconstructions)
        maps = distance_maps(features, reconstructions)
        if self.depth == 3:
            return tuple(maps)
        size = images.shape[-2:]
        generator = self.model.anomaly_map_generator
        if self.depth == 4:
            return (self.no_blur.combine(maps, size),)
        if self.depth == 5:
            return (generator.combine(maps, size),)
        out = self.model.score(features, reconstructions, size)
        return out.pred_score, out.anomaly_map


def graphs(model: Ckaad) -> dict[str, nn.Module]:
    """Every prefix of :data:`STAGES`, named by its last stage."""
    prefixes: dict[str, nn.Module] = {STAGES[0]: Backbone(model)}
    prefixes |= {STAGES[depth - 1]: Prefix(model, depth) for depth in range(2, 7)}
    prefixes[STAGES[-1]] = Pipeline(model)
    return {name: graph.eval() for name, graph in prefixes.items()}


def main() -> None:
    """Profile each backbone's pipeline by stage."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--size", type=int, default=SIZE, help="input side in pixels (default 256)")
    parser.add_argument("--slim", default=None, metavar="WIDTH[:BLOCKS]", help="ae_width / ae_blocks to profile")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    install_lite0_weights()
    workdir = Path(tempfile.mkdtemp(prefix="ckaad_profile_"))
    batch = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
    options = slim_options(args.slim) if args.slim else {}
    for backbone in args.backbones:
        model = build_ckaad(backbone, args.size, **options)
        with model.model.inference_only(), torch.no_grad():
            runners: dict[str, Callable[[np.ndarray], object]] = {}
            for name, graph in graphs(model).items():
                run = openvino_runner(graph, 1, None, workdir, args.size)
                assert run is not None  # noqa: S101 - FP32 always compiles
                runners[name] = run
            stats = measure_interleaved(runners, batch, args.iters, args.warmup)
        ae_params = sum(p.numel() for p in model.model.autoencoder.parameters())
        print(f"\n{backbone} {list(BACKBONES[backbone])} {args.size} px, AE {options or 'paper'} "
              f"({ae_params / 1e6:.2f} M parameters), OpenVINO FP32, batch 1, p50 of {args.iters} rounds:")  # fmt: skip
        floor, total, previous = stats[STAGES[0]]["p50_ms"], stats[STAGES[-1]]["p50_ms"], 0.0
        print(f"  {'stage':18s} {'cumulative ms':>13s} {'stage ms':>9s} {'×backbone':>10s}")
        for name in STAGES:
            cumulative = stats[name]["p50_ms"]
            print(f"  {name:18s} {cumulative:13.3f} {cumulative - previous:9.3f} {cumulative / floor:10.2f}")
            previous = cumulative
        print(f"  tail after the auto-encoder: {total - stats[STAGES[1]]['p50_ms']:.3f} ms")


if __name__ == "__main__":
    main()
