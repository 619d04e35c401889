"""Tests for cnclip_lora.inputs.images: decoding rules (modes, alpha, 16-bit, EXIF, draft), and the pixels
the model sees (flips, the batched squash path against the checkpoint's own processor)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cnclip_lora.errors import DataError
from cnclip_lora.inputs.images import load_image, open_image, preprocess_images, supports_uint8_path


def _jpeg_bytes(size=(64, 48), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _save(im: Image.Image, path, fmt, **kwargs):
    im.save(path, fmt, **kwargs)
    return path


def test_open_image_accepts_any_pillow_image(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    cases = {
        "gray.jpg": _save(Image.fromarray(gray, "L"), tmp_path / "gray.jpg", "JPEG"),
        "cmyk.jpg": _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", "JPEG"),
        "pal.png": _save(Image.new("RGB", (8, 8), "blue").convert("P"), tmp_path / "pal.png", "PNG"),
        "png_named.jpg": _save(Image.new("RGB", (8, 8), "green"), tmp_path / "png_named.jpg", "PNG"),
        "a.webp": _save(Image.new("RGB", (8, 8), "red"), tmp_path / "a.webp", "WEBP"),
        "a.bmp": _save(Image.new("RGB", (8, 8), "red"), tmp_path / "a.bmp", "BMP"),
    }
    for name, path in cases.items():
        im = open_image(path)
        assert im.mode == "RGB" and im.size == (8, 8), name
    r, g, b = open_image(cases["cmyk.jpg"]).getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60
    assert open_image(cases["pal.png"]).getpixel((0, 0)) == (0, 0, 255)
    assert open_image(cases["png_named.jpg"]).getpixel((0, 0)) == (0, 128, 0)


def test_transparency_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    im = open_image(_save(rgba, tmp_path / "a.png", "PNG"))
    assert im.getpixel((1, 1)) == (255, 255, 255) and im.getpixel((0, 0)) == (255, 0, 0)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.putpixel((0, 0), 1)
    im = open_image(_save(pal, tmp_path / "p.png", "PNG", transparency=0))
    assert im.getpixel((1, 1)) == (255, 255, 255) and im.getpixel((0, 0)) == (10, 20, 30)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.full((4, 4), 257 * 128, dtype=np.uint16)
    values[0, 0] = 65535
    im = open_image(_save(Image.fromarray(values), tmp_path / "deep.png", "PNG"))
    assert im.getpixel((1, 1)) == (128, 128, 128) and im.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(Image.new("RGB", (20, 10), "white"), tmp_path / "rot.jpg", "JPEG", exif=exif)
    assert Image.open(path).size == (20, 10)
    assert open_image(path).size == (10, 20)


def test_draft_size_decodes_jpeg_smaller_but_not_below_target(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg_bytes((640, 480)))
    assert open_image(path).size == (640, 480)
    assert open_image(path, draft_size=200).size == (320, 240)  # 1/2: 1/4 would go below 200
    assert open_image(path, draft_size=50).size == (80, 60)
    png = _save(Image.new("RGB", (640, 480)), tmp_path / "big.png", "PNG")
    assert open_image(png, draft_size=50).size == (640, 480)


def test_open_image_failure_names_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot read image .*bad\.jpg: not an image Pillow can read"):
        open_image(bad)
    with pytest.raises(DataError, match=r"gone\.jpg: file not found"):
        open_image(tmp_path / "gone.jpg")


def test_flip_always_mirrors_pixels_and_none_does_not(processor, asym_image):
    plain = preprocess_images([asym_image], processor.image_processor, flips=False)
    flipped = preprocess_images([asym_image], processor.image_processor, flips=True)
    assert torch.allclose(flipped, torch.flip(plain, dims=[-1]), atol=1e-5)
    assert not torch.allclose(flipped, plain, atol=1e-2)


@pytest.mark.parametrize("draft", [True, False])
def test_batched_path_equals_the_checkpoint_processor(processor, tmp_path, draft):
    """The batched resize/rescale/normalise must give the processor's own pixels (float32 within 1e-5),
    for odd sizes, PNG and JPEG, flipped or not."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(224, 224), (300, 180), (50, 90), (1000, 20)]):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for ext in ("png", "jpg"):
            Image.fromarray(arr).save(tmp_path / f"{i}.{ext}")
            paths.append(tmp_path / f"{i}.{ext}")
    image_processor = processor.image_processor
    assert supports_uint8_path(image_processor)  # the tiny checkpoint is squash-resize, like the Hub's
    fast = preprocess_images(paths, image_processor, flips=True, draft=draft)
    size = 64 if draft else None
    ref = image_processor(images=[load_image(p, flip=True, draft_size=size) for p in paths], return_tensors="pt")
    assert fast.dtype == ref["pixel_values"].dtype
    torch.testing.assert_close(fast, ref["pixel_values"], rtol=0, atol=1e-5)


def test_crop_processors_use_the_processor_itself():
    """Class defaults (shortest-edge resize + centre crop) are not the squash case: no batched path."""
    from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil

    assert not supports_uint8_path(ChineseCLIPImageProcessorPil())
