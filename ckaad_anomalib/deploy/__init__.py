"""Edge deployment: torch-free OpenVINO inference (needs only openvino, numpy and pillow)."""

from .openvino_infer import EdgeDetector, EdgeResult, OutputFile, Skipped, heatmap_overlay, load_image, run

__all__ = ["EdgeDetector", "EdgeResult", "OutputFile", "Skipped", "heatmap_overlay", "load_image", "run"]
