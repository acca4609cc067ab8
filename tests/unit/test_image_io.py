"""Image reading: real bit depth for 16-bit / float images, every Pillow mode, named errors, anomalib uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ckaad_anomalib.deploy.openvino_infer import OutputFile, load_image
from ckaad_anomalib.image_io import UnreadableImageError, main, read_image, unreadable_images

GREY = np.tile(np.linspace(0, 1, 32, dtype=np.float64), (32, 1))  # a ramp: every bit depth must keep it


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    path = _save(tmp_path / f"g16{suffix}", (GREY * 65535).round().astype(np.uint16))
    assert Image.open(path).mode == "I;16"
    image = read_image(path, as_tensor=True)
    assert isinstance(image, torch.Tensor)
    assert image.shape == (3, 32, 32)
    assert image.dtype == torch.float32
    np.testing.assert_allclose(image[0].numpy(), GREY, atol=1e-5)  # anomalib's reader gives ~1.0 almost everywhere
    assert torch.equal(image[0], image[2])


def test_32_bit_int_holding_16_bit_and_float_images(tmp_path: Path) -> None:
    wide = _save(tmp_path / "i32.tif", (GREY * 65535).round().astype(np.int32))
    assert Image.open(wide).mode == "I"
    np.testing.assert_allclose(read_image(wide)[..., 1], GREY, atol=1e-5)
    flt = _save(tmp_path / "f.tif", GREY.astype(np.float32))
    assert Image.open(flt).mode == "F"
    np.testing.assert_allclose(read_image(flt)[..., 0], GREY, atol=1e-6)
    bad = _save(tmp_path / "hdr.tif", (GREY * 40).astype(np.float32))
    with pytest.raises(UnreadableImageError, match=r"hdr\.tif: float image with values in \[0, 40\]"):
        read_image(bad)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "LA", "1"])
def test_8_bit_modes_match_anomalib_convert_rgb(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    suffix = ".jpg" if mode == "CMYK" else ".png"  # PNG cannot hold CMYK
    path = _save(tmp_path / f"img_{mode}{suffix}", rgb, mode)
    assert Image.open(path).mode == mode
    expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0  # what anomalib computes
    np.testing.assert_array_equal(read_image(path), expected)
    np.testing.assert_array_equal(load_image(path), expected.transpose(2, 0, 1))


def test_truncated_image_is_named_and_findable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _save(tmp_path / "good.png", (GREY * 255).astype(np.uint8))
    data = _save(tmp_path / "cut.jpg", np.zeros((64, 64, 3), np.uint8)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match=r"cut\.jpg: not a readable image .*python -m ckaad_anomalib"):
        read_image(tmp_path / "cut.jpg")
    assert [p.name for p, _ in unreadable_images(tmp_path)] == ["cut.jpg"]
    assert main([str(tmp_path)]) == 1
    assert "cut.jpg" in capsys.readouterr().out
    assert main([str(good.parent / "missing")]) == 0


def test_anomalib_datasets_read_through_the_project_reader(tmp_path: Path) -> None:
    """The start-up hook replaced anomalib's reader before its datasets copied the name."""
    import anomalib.data.datasets.base.image as base
    from anomalib.data import Folder, utils

    assert base.read_image is read_image
    assert utils.read_image is read_image
    normal = tmp_path / "good"
    normal.mkdir()
    for i in range(2):
        _save(normal / f"{i}.png", (GREY * 65535 * (i + 1) / 2).round().astype(np.uint16))
    dataset = Folder(name="g16", root=tmp_path, normal_dir="good", num_workers=0, val_split_mode="none")
    dataset.setup()
    image = dataset.train_data[0].image
    assert float(image.max()) < 0.51  # half-range 16-bit image, not clipped to white
    np.testing.assert_allclose(image[0].numpy(), GREY / 2, atol=1e-4)


def test_output_file_is_checked_first_and_never_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "scores.csv"
    target.write_text("previous run\n")
    with pytest.raises(FileExistsError, match="--overwrite"):
        OutputFile(target)
    with pytest.raises(IsADirectoryError):
        OutputFile(tmp_path)

    target.unlink()
    first, second = OutputFile(target), OutputFile(target)  # two runs started before either finished
    first.handle.write("first\n")
    second.handle.write("second\n")
    first.publish()
    with pytest.raises(FileExistsError, match=r"this run's rows are in .*scores\.\d+\.csv") as info:
        second.publish()
    assert target.read_text() == "first\n"
    kept = Path(str(info.value).rsplit(" ", 1)[-1].rstrip("."))
    assert kept.read_text() == "second\n"
    assert not list(tmp_path.glob(".*.part"))

    replacing = OutputFile(target, overwrite=True)
    replacing.handle.write("third\n")
    replacing.publish()
    assert target.read_text() == "third\n"


def test_unwritable_output_fails_before_any_work(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(PermissionError, match=r"--out .*cannot write"):
        OutputFile(blocked / "sub" / "scores.csv")  # a file where a folder must be
