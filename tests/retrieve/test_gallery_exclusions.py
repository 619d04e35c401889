"""An image that cannot be used is never dropped from the gallery without a word."""

from __future__ import annotations

import pytest
from PIL import Image

from cnclip_lora.commands import main
from cnclip_lora.inputs.images import MAX_PIXELS_ENV


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_retrieve_names_a_gallery_image_over_the_pixel_limit(make_dataset_dir, tiny_model_dir, tmp_path, monkeypatch,
                                                            capsys):  # fmt: skip
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    root = make_dataset_dir(tmp_path)
    Image.new("RGB", (60, 60), "red").save(root / "image" / "huge.jpg")  # 3,600 pixels
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")  # the 16x16 images pass, huge.jpg does not
    out = tmp_path / "submit.csv"
    code = main(["retrieve", "--model_name_or_path", str(tiny_model_dir), "--data_dir", str(root), "--output",
                 str(out), "--device", "cpu", "--cache_dir", ""])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "left out of the gallery" in err and "huge.jpg" in err
    assert "huge.jpg" not in out.read_text(encoding="utf-8")
