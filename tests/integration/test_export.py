"""Export to torch / ONNX / OpenVINO: no discriminator inside, same predictions as eager, INT8 on normal images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest
import torch
from anomalib.deploy import CompressionType, ExportType
from anomalib.engine import Engine
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from ckaad_anomalib import Ckaad
from ckaad_anomalib.deploy import EdgeDetector
from ckaad_anomalib.deploy.openvino_infer import PRECISE_MARK_READ, load_image
from tests.integration.conftest import export_datamodule as _datamodule

pytestmark = [pytest.mark.slow, pytest.mark.long]  # shares the 90 s trained-and-exported fixture


def _inference_params(model: Ckaad) -> int:
    return sum(p.numel() for m in (model.model.extractor, model.model.autoencoder) for p in m.parameters())


def test_exports_hold_no_discriminator_weights(exported: tuple[Ckaad, dict[str, Path]]) -> None:
    model, paths = exported
    d_params = sum(p.numel() for p in model.model.patch_discriminator.parameters())  # type: ignore[union-attr]
    assert d_params > 0

    torch_model = torch.load(paths["torch"], weights_only=False)["model"]
    keys = torch_model.state_dict().keys()
    assert not any("discriminator" in k for k in keys)
    assert sum(p.numel() for p in torch_model.parameters()) == _inference_params(model)

    # ONNX and OpenVINO keep parameter names: the auto-encoder's are there, no discriminator's
    onnx_names = [init.name for init in onnx.load(str(paths["onnx"])).graph.initializer]
    assert any("autoencoder" in name for name in onnx_names)
    assert not any("discriminator" in name for name in onnx_names)
    ov_names = [op.get_friendly_name() for op in ov.Core().read_model(str(paths["openvino"])).get_ops()]
    assert any("autoencoder" in name for name in ov_names)
    assert not any("discriminator" in name for name in ov_names)


def _images(root: Path) -> tuple[list[Path], np.ndarray]:
    """The test split's images (not the validation ones, on whose scores the threshold sits) and labels."""
    datamodule = _datamodule(root)
    datamodule.setup("test")
    samples = datamodule.test_data.samples
    return [Path(p) for p in samples.image_path], samples.label_index.to_numpy().astype(bool)


def test_onnx_and_openvino_match_eager(exported: tuple[Ckaad, dict[str, Path]], mvtec_root: Path) -> None:
    import onnxruntime as ort

    model, paths = exported
    files, truth = _images(mvtec_root)
    batch = np.stack([load_image(p) for p in files])
    with torch.no_grad():
        eager = model(torch.from_numpy(batch))  # pre-processing + model + post-processing, as exported
    eager_map, eager_score = eager.anomaly_map.numpy(), eager.pred_score.numpy()

    session = ort.InferenceSession(str(paths["onnx"]))
    names = [o.name for o in session.get_outputs()]
    onnx_out = dict(zip(names, session.run(None, {"input": batch}), strict=True))
    ov_out = EdgeDetector(paths["openvino"], batch_size=len(files)).infer(batch)

    for out in (onnx_out, ov_out):
        assert np.abs(out["anomaly_map"] - eager_map).max() <= 1e-3
        assert np.array_equal(out["pred_label"].astype(bool), eager.pred_label.numpy().astype(bool))
        assert round(roc_auc_score(truth, out["pred_score"]), 3) == round(roc_auc_score(truth, eager_score), 3)


def test_anomalib_openvino_inferencer_matches_eager_with_its_defaults(
    exported: tuple[Ckaad, dict[str, Path]], mvtec_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """anomalib's own deployment path, no precision passed: f32 results also where the CPU defaults to bf16."""
    from anomalib.deploy import OpenVINOInferencer

    monkeypatch.chdir(tmp_path)  # the inferencer writes ./openvino_cache
    model, paths = exported
    files, _ = _images(mvtec_root)
    batch = np.stack([load_image(p) for p in files])
    with torch.no_grad():
        eager = model(torch.from_numpy(batch))
    eager_map, eager_score = eager.anomaly_map.numpy(), eager.pred_score.numpy()

    assert all(PRECISE_MARK_READ in op.get_rt_info() for op in ov.Core().read_model(paths["openvino"]).get_ops())
    inferencer = OpenVINOInferencer(path=paths["openvino"])  # device AUTO, no config: what a user writes
    results = [inferencer.predict(image[None]) for image in batch]
    ov_map = np.stack([np.asarray(r.anomaly_map).reshape(eager_map.shape[1:]) for r in results])
    ov_score = np.array([np.asarray(r.pred_score).item() for r in results])
    assert np.abs(ov_map - eager_map).max() <= 1e-3
    assert np.abs(ov_score - eager_score).max() <= 1e-3

    # The opt-in bf16 of ckaad-infer drops the marks; on a CPU with bf16 that visibly moves the map, so the
    # parity above is the marks' doing (on a CPU without bf16 both run in f32).
    bf16 = EdgeDetector(paths["openvino"], precision="bf16", batch_size=len(files)).infer(batch)
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert np.abs(bf16["anomaly_map"] - eager_map).max() > 1e-3


def test_int8_export_calibrates_on_normal_images(
    exported: tuple[Ckaad, dict[str, Path]], mvtec_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, paths = exported
    fp32_statistics = {k: v.clone() for k, v in model.post_processor.state_dict().items()}
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", logger=False)
    with caplog.at_level(logging.INFO):
        int8 = engine.export(
            model,
            ExportType.OPENVINO,
            export_root=tmp_path,
            compression_type=CompressionType.INT8_PTQ,
            datamodule=_datamodule(mvtec_root),
        )
    assert "INT8 calibration on 12 normal training images" in caplog.text
    assert "INT8 threshold from its own scores on" in caplog.text
    for name, value in model.post_processor.state_dict().items():  # the torch model keeps FP32's statistics
        torch.testing.assert_close(value, fp32_statistics[name], equal_nan=True)
    # its own threshold, at FP32's operating point: on the validation split INT8 flags as many images as FP32
    datamodule = _datamodule(mvtec_root)
    datamodule.setup("fit")
    samples = datamodule.val_data.samples
    val_images = np.stack([load_image(p) for p in samples.image_path])
    val_int8 = EdgeDetector(int8, batch_size=len(samples)).infer(val_images)
    val_fp32 = EdgeDetector(paths["openvino"], batch_size=len(samples)).infer(val_images)
    assert 0 < val_fp32["pred_label"].sum() < len(samples)  # a threshold inside the scores: the count can differ
    assert val_int8["pred_label"].sum() == val_fp32["pred_label"].sum()
    ov_model = ov.Core().read_model(str(int8))
    assert any(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ops())
    files, _ = _images(mvtec_root)
    batch = np.stack([load_image(p) for p in files])
    fp32 = EdgeDetector(paths["openvino"], batch_size=len(files)).infer(batch)
    quantised = EdgeDetector(int8, batch_size=len(files)).infer(batch)
    assert quantised["anomaly_map"].shape == fp32["anomaly_map"].shape
    assert np.isfinite(quantised["pred_score"]).all()
    # the scoring tail stays in float: INT8 keeps the map's spread and the images' ranking (quantising the tail
    # collapsed the map to a constant: AUROC 0.5)
    assert quantised["anomaly_map"].std() > 0.5 * fp32["anomaly_map"].std()
    assert spearmanr(quantised["pred_score"], fp32["pred_score"]).statistic >= 0.8
    with pytest.raises(ValueError, match="calibrates on normal training images"):
        Ckaad._post_training_quantization_ov(ov_model, None)
