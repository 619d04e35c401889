"""One answer per input across verbs: an image over the pixel limit (or otherwise unreadable) is
fatal, or left out with a warning naming it, the same way in every verb (docs/robustness.md's
table says which), and an unusable answers file stops only what scores the test queries."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from PIL import Image

from cnclip_lora.commands import main
from cnclip_lora.inputs.images import MAX_PIXELS_ENV

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture
def bombs(demo_dir, tmp_path, monkeypatch):
    """The demo data with one training image and one extra gallery image over the pixel limit."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    root = tmp_path / "data"
    shutil.copytree(demo_dir, root)
    with Image.open(next((root / "image").iterdir())) as im:
        limit = im.width * im.height  # the demo's images are exactly at the limit
    monkeypatch.setenv(MAX_PIXELS_ENV, str(limit))
    train = pd.read_csv(root / "train.csv", sep="\t", dtype=str)
    big = Image.new("RGB", (int(limit**0.5) + 20, int(limit**0.5) + 20), "red")
    big.save(root / "image" / train["path"][0], "JPEG")
    big.save(root / "image" / "huge.png")
    return root, train["path"][0], "huge.png"


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def _model(tiny_model_dir) -> list[str]:
    return ["--model_name_or_path", str(tiny_model_dir), "--device", "cpu", "--cache_dir", ""]


def test_check_data_calls_both_fatal_and_skips_them_with_skip_bad_rows(bombs, capsys):
    root, row_image, gallery_image = bombs
    code, out, _ = _run(["check-data", str(root)], capsys)
    assert code == 1 and row_image in out and gallery_image in out and "NOT OK" in out
    code, out, _ = _run(["check-data", str(root), "--skip_bad_rows"], capsys)
    assert code == 0 and "(row skipped)" in out and "(excluded from the gallery)" in out


def test_train_stops_before_loading_and_skips_them_with_skip_bad_rows(bombs, tiny_model_dir, tmp_path, capsys):
    root, row_image, gallery_image = bombs
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--data_dir", str(root), "--output_dir",
            str(tmp_path / "o"), "--max_steps", "1", "--per_device_train_batch_size", "4", "--lora_r", "2",
            "--lora_alpha", "4", "--use_cpu", "true", "--report_to", "none", "--val_size", "0"]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 2 and row_image in err and gallery_image in err and "--skip_bad_rows" in err
    assert not (tmp_path / "o" / "adapter_model.safetensors").exists()
    code, _, err = _run([*argv, "--skip_bad_rows", "true"], capsys)
    assert code == 0 and "1 training row(s) skipped" in err and row_image in err and gallery_image in err


@pytest.mark.parametrize("verb", ["retrieve", "evaluate", "report"])
def test_the_retrieval_verbs_leave_them_out_and_say_so(verb, bombs, tiny_model_dir, tmp_path, capsys):
    root, row_image, gallery_image = bombs
    out = tmp_path / ("r.html" if verb == "report" else "topk.csv")
    extra = {"retrieve": ["--topk_output", str(out), "--top_k", "200"], "report": ["--output", str(out)]}
    code, _, err = _run([verb, *_model(tiny_model_dir), "--data_dir", str(root), *extra.get(verb, [])], capsys)
    assert code == 0, err
    assert "left out of the gallery" in err and gallery_image in err and row_image in err
    if out.exists():
        assert gallery_image not in out.read_text(encoding="utf-8")


@pytest.mark.parametrize("mode", ["data_dir", "image_dir"])
def test_serve_leaves_them_out_and_says_so(mode, bombs, tiny_model_dir, caplog):
    from cnclip_lora.retrieve.arguments import ServeArguments
    from cnclip_lora.retrieve.serve import load_engine

    root, row_image, gallery_image = bombs
    extra = {"image_dir": str(root / "image")} if mode == "image_dir" else {}
    engine = load_engine(
        ServeArguments(model_name_or_path=str(tiny_model_dir), data_dir=str(root), cache_dir="", **extra)
    )
    assert gallery_image not in engine.names and row_image not in engine.names
    assert gallery_image in caplog.text


@pytest.fixture
def bad_answers(bombs):
    """Besides the images above, an answered test image over the limit: the answer cannot be scored."""
    root, _, _ = bombs
    answered = pd.read_csv(root / "test_answers.csv")["path"][0]
    shutil.copy(root / "image" / "huge.png", root / "image" / answered)
    return root, answered


def test_an_unusable_answers_file_stops_only_what_scores_the_test_queries(
    bad_answers, tiny_model_dir, tmp_path, capsys
):
    root, answered = bad_answers
    model = [*_model(tiny_model_dir), "--data_dir", str(root)]
    code, _, err = _run(["evaluate", *model, "--split", "test"], capsys)
    assert code == 2 and "test_answers.csv, line 2" in err and answered in err
    code, out, err = _run(["evaluate", *model], capsys)  # the held-out split needs no answers
    assert code == 0 and "val_t2i_MR" in out, err
    code, out, err = _run(["retrieve", *model, "--output", str(tmp_path / "s.csv")], capsys)
    assert code == 0 and "no test metrics" in err and "test_t2i_MR" not in out
    code, _, err = _run(["report", *model, "--output", str(tmp_path / "r.html")], capsys)
    assert code == 0 and "test queries are not shown" in err
    assert '<section id="test">' not in (tmp_path / "r.html").read_text(encoding="utf-8")
    code, _, err = _run(["report", *model, "--split", "test", "--output", str(tmp_path / "t.html")], capsys)
    assert code == 2 and answered in err  # asked for by name: refused
