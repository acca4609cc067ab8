"""Edge deployment: torch-free OpenVINO inference (needs only openvino, numpy and pillow)."""

from .openvino_infer import EdgeDetector, EdgeResult, Skipped, run

__all__ = ["EdgeDetector", "EdgeResult", "Skipped", "run"]
