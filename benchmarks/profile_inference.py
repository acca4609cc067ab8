"""Where does deployed CKAAD spend its time? Per-component latency in OpenVINO FP32, batch 1, 256×256, CPU.

Components: the frozen extractor (with normalisation), the feature auto-encoder (features in), the anomaly map
(per-stage cosine distance, bilinear upsampling, sum) and the Gaussian blur (σ = 4, 33×33 kernel). Each is exported
through ONNX on its own, like `anomalib export`. The full pipeline is measured too, for reference.

    python benchmarks/profile_inference.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from inference_speed import BACKBONES, SIZE, Backbone, Pipeline, measure
from torch import nn
from torch.nn import functional as F  # noqa: N812

from ckaad_anomalib import Ckaad, install_lite0_weights


class AutoEncoder(nn.Module):
    """The feature auto-encoder alone."""

    def __init__(self, model: Ckaad) -> None:
        super().__init__()
        self.autoencoder = model.model.autoencoder

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Reconstruct the features."""
        return tuple(self.autoencoder(list(features)))


class MapNoBlur(nn.Module):
    """Cosine distance per stage, upsampled to the input size and summed (no blur)."""

    def forward(self, *pairs: torch.Tensor) -> torch.Tensor:
        """``pairs`` = features..., reconstructions...."""
        half = len(pairs) // 2
        maps = [
            F.interpolate((1 - F.cosine_similarity(f, r, dim=1)).unsqueeze(1), size=(SIZE, SIZE), mode="bilinear")
            for f, r in zip(pairs[:half], pairs[half:], strict=True)
        ]
        return torch.stack(maps).sum(0)


def ov_latency(module: nn.Module, inputs: tuple[torch.Tensor, ...], workdir: Path, iters: int) -> float:
    """p50 latency (ms) of ``module`` on ``inputs`` after ONNX → OpenVINO FP32 (f32 hint)."""
    path = workdir / f"{module.__class__.__name__}_{id(module)}.onnx"
    torch.onnx.export(module, inputs, str(path), dynamo=True, opset_version=18)
    compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    feed = {i: x.numpy() for i, x in enumerate(inputs)}
    return measure(lambda _: request.infer(feed), np.zeros(1), iters, warmup=5)["p50_ms"]


def main() -> None:
    """Profile each backbone's pipeline by component."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args()
    install_lite0_weights()
    workdir = Path(tempfile.mkdtemp(prefix="ckaad_profile_"))
    image = torch.rand(1, 3, SIZE, SIZE)
    for backbone in args.backbones:
        model = Ckaad(backbone=backbone, layers=BACKBONES[backbone], pre_trained=False, visualizer=False).eval()
        with torch.no_grad(), model.model.inference_only():
            features = tuple(model.model.extract(image))
            recons = tuple(model.model.autoencoder(list(features)))
            amap = MapNoBlur()(*features, *recons)
            parts = {
                "extractor (+normalise)": ov_latency(Backbone(model).eval(), (image,), workdir, args.iters),
                "auto-encoder": ov_latency(AutoEncoder(model).eval(), features, workdir, args.iters),
                "map (cos, upsample, sum)": ov_latency(MapNoBlur(), features + recons, workdir, args.iters),
                "Gaussian blur 33×33": ov_latency(model.model.anomaly_map_generator.blur, (amap,), workdir, args.iters),
            }
            total = ov_latency(Pipeline(model).eval(), (image,), workdir, args.iters)
        ae_params = sum(p.numel() for p in model.model.autoencoder.parameters())
        print(f"\n{backbone} {list(BACKBONES[backbone])}: stages {[tuple(f.shape[1:]) for f in features]}, "
              f"AE {ae_params / 1e6:.2f} M parameters")  # fmt: skip
        for name, ms in parts.items():
            print(f"  {name:26s} {ms:7.2f} ms  {100 * ms / total:5.1f} % of the pipeline")
        print(f"  {'full pipeline':26s} {total:7.2f} ms  (sum of parts {sum(parts.values()):.2f} ms)")


if __name__ == "__main__":
    main()
