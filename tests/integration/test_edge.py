"""Torch-free edge inference: a subprocess in which torch cannot be imported."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli, scaled_timeout

pytestmark = [pytest.mark.slow, pytest.mark.long]  # shares the 90 s trained-and-exported fixture

NO_TORCH = (
    "import sys\n"
    "sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
    "from ckaad_anomalib.deploy.openvino_infer import main\n"
    "status = main(sys.argv[1:])\n"
    "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    "sys.exit(status)\n"
)


def _edge(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=scaled_timeout(30),
    )


def test_scores_a_folder_without_torch(exported: tuple, mvtec_root: Path, tmp_path: Path) -> None:
    _, paths = exported
    images = mvtec_root / "brick" / "test"
    out = tmp_path / "scores.csv"
    proc = _edge(
        [str(paths["openvino"]), str(images), "--out", str(out), "--heatmaps", str(tmp_path / "heat")], tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(list(images.rglob("*.png"))) == 10
    assert {r["label"] for r in rows} <= {"normal", "anomalous"}
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert len(list((tmp_path / "heat").glob("*.png"))) == 10
    assert "10/10 images" in proc.stderr  # progress bar
    assert "10 image(s) scored" in proc.stdout


def test_bad_inputs(exported: tuple, mvtec_root: Path, tmp_path: Path) -> None:
    _, paths = exported
    model = str(paths["openvino"])
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = next((mvtec_root / "brick" / "test" / "good").glob("*.png"))
    (folder / "ok.png").write_bytes(good.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    proc = _edge([model, str(folder), "--out", str(tmp_path / "s.csv")], tmp_path)
    assert proc.returncode == 1  # some images were skipped
    assert "1 image(s) scored" in proc.stdout
    assert "1 skipped" in proc.stdout
    assert "broken.png: not a readable image" in proc.stderr
    rows = {Path(r["path"]).name: r for r in csv.DictReader((tmp_path / "s.csv").open())}
    assert rows["ok.png"]["status"] == "ok"
    assert rows["broken.png"]["status"].startswith("skipped: ")  # in the CSV, not only on stderr
    assert rows["broken.png"]["score"] == rows["broken.png"]["label"] == ""

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _edge([model, str(empty)], tmp_path)
    assert proc.returncode == 2
    assert f"folder {empty} holds no images" in proc.stderr

    proc = _edge([str(paths["torch"]), str(folder)], tmp_path)
    assert proc.returncode == 2
    assert "expected an OpenVINO model.xml" in proc.stderr

    fake = tmp_path / "fake.xml"
    fake.write_text("<net/>")
    proc = _edge([str(fake), str(folder)], tmp_path)
    assert proc.returncode == 2
    assert "fake.bin (the weights of fake.xml) is missing" in proc.stderr


def test_console_script(exported: tuple, mvtec_root: Path, tmp_path: Path) -> None:
    _, paths = exported
    image = next((mvtec_root / "brick" / "test" / "stain").glob("*.png"))
    proc = run_cli(["ckaad-infer", str(paths["openvino"]), str(image), "--out", "one.csv"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "one.csv").read_text().count("\n") == 2


def test_16_bit_image_scores_like_its_8_bit_twin(exported: tuple, mvtec_root: Path, tmp_path: Path) -> None:
    """anomalib's convert("RGB") read 16-bit images as white; ckaad-infer scored them as anomalous."""
    import numpy as np
    from PIL import Image

    _, paths = exported
    source = next((mvtec_root / "brick" / "test" / "good").glob("*.png"))
    grey = np.asarray(Image.open(source).convert("L"))
    Image.fromarray(grey).save(tmp_path / "g8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # the same picture in 16 bits
    proc = _edge([str(paths["openvino"]), str(tmp_path / "g8.png"), str(tmp_path / "g16.png")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    scores = [float(r["score"]) for r in csv.DictReader((tmp_path / "scores.csv").open())]
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)


def test_existing_output_is_refused_before_scoring(exported: tuple, mvtec_root: Path, tmp_path: Path) -> None:
    _, paths = exported
    image = next((mvtec_root / "brick" / "test" / "good").glob("*.png"))
    out = tmp_path / "scores.csv"
    out.write_text("rows of an earlier run\n")
    proc = _edge([str(paths["openvino"]), str(image), "--out", str(out)], tmp_path)
    assert proc.returncode == 2
    assert "exists: pass --overwrite" in proc.stderr
    assert "image(s) scored" not in proc.stdout
    assert out.read_text() == "rows of an earlier run\n"
    proc = _edge([str(paths["openvino"]), str(image), "--out", str(out), "--overwrite"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().startswith("path,score,label,status")
