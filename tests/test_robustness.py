"""The catalogue of bad inputs (issue 8): each is accepted with its documented behaviour, or
rejected with a message naming the file, the row and the fix, and no traceback.

| input | behaviour |
| --- | --- |
| title longer than 52 tokens | truncated to ``max_length``, counted by ``count_truncated`` |
| image over the pixel limit | DataError naming the file and ``CNCLIP_MAX_IMAGE_PIXELS`` |
| EXIF-rotated photo | turned upright, identically in training and retrieval |
| alpha / 16-bit image | alpha composited on white, 16 bit scaled to 8 |
| extra columns in test_query.csv | ignored; sample_submit's columns kept in the submission |
| several captions for one image | allowed; UniqueImageSampler keeps them out of one batch |
| empty gallery | retrieve exits 2 with a message |
| more queries than images + hungarian | retrieve exits 2 with a message |
| pickled adapter | retrieve exits 2 explaining why |
| many problems at once | check-data lists every one, grouped with counts |
"""

from __future__ import annotations

import inspect
import random
import re
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cnclip_lora.adapter.record import Preprocessing
from cnclip_lora.commands import main
from cnclip_lora.data import (
    MAX_PIXELS_ENV,
    check_data,
    count_truncated,
    load_competition_data,
    max_image_pixels,
    open_image,
)
from cnclip_lora.errors import ConfigError, DataError
from cnclip_lora.inputs.collate import ImageTextCollator
from cnclip_lora.inputs.text import tokenize_titles
from cnclip_lora.training.sampler import UniqueImageSampler, has_duplicate_images, unique_image_sampler_for


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


def _run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    return code, text


# ------------------------------------------------------------------------ long titles


def test_long_titles_are_truncated_and_counted_never_rejected(tmp_path, make_dataset_dir, processor):
    root = make_dataset_dir(tmp_path)
    long_title = "云思木想2019秋装新款高领弹力前后打揽修身织带长袖T恤女" * 6  # ~200 characters
    with open(root / "train.csv", "a", encoding="utf-8") as fh:
        fh.write(f"{long_title}\ttrain_000.jpg\n")
    data = load_competition_data(root, val_size=0)
    assert long_title in list(data.train["title"])
    titles = list(data.train["title"])
    n_long = count_truncated(titles, processor.tokenizer, max_length=52)
    assert n_long == 1
    assert count_truncated(titles, processor.tokenizer, max_length=512) == 0
    # every title shorter than the cut is not counted, whatever the batch size
    assert count_truncated(titles * 3, processor.tokenizer, max_length=52, batch_size=2) == 3
    batch = tokenize_titles(titles, processor.tokenizer, max_length=52)
    assert batch["input_ids"].shape == (len(titles), 52)
    row = titles.index(long_title)
    assert int(batch["attention_mask"][row].sum()) == 52  # cut, not dropped
    data.report.truncated_titles = n_long
    assert re.search(r"truncated titles:\s+1", data.report.summary())


# ------------------------------------------------------------------------- huge images


@pytest.fixture
def pixel_limit(monkeypatch):
    """Restore Pillow's global limit, which CNCLIP_MAX_IMAGE_PIXELS changes, after the test."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    return monkeypatch


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_over_the_pixel_limit_is_a_clear_data_error(tmp_path, pixel_limit):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30), "red").save(path)
    pixel_limit.setenv(MAX_PIXELS_ENV, "1000")
    assert max_image_pixels() == 1000
    with pytest.raises(DataError, match=rf"big\.png: 1,200 pixels, over the 1,000-pixel limit .*{MAX_PIXELS_ENV}"):
        open_image(path)
    pixel_limit.setenv(MAX_PIXELS_ENV, "1_200")
    assert open_image(path).size == (40, 30)
    pixel_limit.setenv(MAX_PIXELS_ENV, "none")
    assert max_image_pixels() is None and open_image(path).size == (40, 30)


def test_pillows_own_bomb_error_gets_the_same_advice(tmp_path, pixel_limit):
    path = tmp_path / "bomb.png"
    Image.new("L", (50, 50)).save(path)
    pixel_limit.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow raises above 2x its limit
    with pytest.raises(DataError, match=rf"bomb\.png: 2,500 pixels, over .*decompression bombs.*{MAX_PIXELS_ENV}"):
        open_image(path)


@pytest.mark.parametrize("value", ["lots", "-5", "1e9x"])
def test_bad_pixel_limit_setting_is_a_config_error(value, pixel_limit, tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(path)
    pixel_limit.setenv(MAX_PIXELS_ENV, value)
    with pytest.raises(ConfigError, match=MAX_PIXELS_ENV):
        open_image(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_check_data_names_the_huge_image_row_and_fix(tmp_path, make_dataset_dir, pixel_limit):
    root = make_dataset_dir(tmp_path, answers=False)
    Image.new("RGB", (40, 40), "blue").save(root / "image" / "train_002.jpg", "JPEG")
    Image.new("RGB", (40, 40), "blue").save(root / "image" / "gal_001.jpg", "JPEG")
    pixel_limit.setenv(MAX_PIXELS_ENV, "1000")
    report = check_data(root)
    text = "\n".join(map(str, report.fatal_problems))
    assert re.search(r"train\.csv, line 4: image `train_002\.jpg` cannot be read \(1,600 pixels", text)
    assert re.search(r"image/gal_001\.jpg: cannot be read \(1,600 pixels.*CNCLIP_MAX_IMAGE_PIXELS", text)
    assert len(report.fatal_problems) == 2


# ------------------------------------------------------------------- EXIF orientation


def _exif_rotated_pair(folder: Path) -> tuple[Path, Path]:
    """A JPEG stored sideways with EXIF orientation 6, and its upright pixels as a lossless PNG."""
    rng = np.random.default_rng(0)
    upright = Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))  # 96 wide, 64 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # viewer must rotate 90 degrees clockwise
    rotated = folder / "sideways.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(rotated, "JPEG", quality=95, exif=exif)
    with Image.open(rotated) as raw:  # decoded without EXIF handling: stored sideways
        assert raw.size == (64, 96)
        reference = raw.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    ref_path = folder / "upright.png"
    reference.save(ref_path)
    return rotated, ref_path


def test_exif_rotation_is_applied_the_same_in_training_and_retrieval(tmp_path, processor, tiny_model_dir):
    from transformers import ChineseCLIPModel

    from cnclip_lora.inference.model import RetrievalModel

    rotated, upright = _exif_rotated_pair(tmp_path)
    assert open_image(rotated).size == (96, 64)
    rows = [{"title": "红色T恤", "path": rotated.name}, {"title": "红色T恤", "path": upright.name}]
    for flip in ("none", "always"):
        pixels = ImageTextCollator(processor, tmp_path, flip=flip)(rows)["pixel_values"]
        torch.testing.assert_close(pixels[0], pixels[1], atol=0, rtol=0)
    # The sideways pixels really differ, so the equality above is the rotation at work.
    sideways = tmp_path / "sideways_no_exif.png"
    with Image.open(rotated) as raw:
        raw.convert("RGB").save(sideways)
    plain = ImageTextCollator(processor, tmp_path, flip="none")([{"title": "x", "path": sideways.name}])
    assert not torch.allclose(plain["pixel_values"][0], pixels[0])

    model = ChineseCLIPModel.from_pretrained(tiny_model_dir).eval()
    for prep in (Preprocessing(train_flip="none"), Preprocessing(train_flip="always")):
        emb = RetrievalModel(model, processor, prep).encode_images([rotated, upright], batch_size=2)
        np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)


# ------------------------------------------------------------------ alpha and 16-bit


def test_alpha_and_16_bit_images_reach_the_model_as_documented(tmp_path, processor):
    white = Image.new("RGB", (32, 32), "white")
    white.save(tmp_path / "white.png")
    Image.new("RGBA", (32, 32), (200, 10, 10, 0)).save(tmp_path / "clear.png")  # fully transparent
    Image.new("LA", (32, 32), (30, 0)).save(tmp_path / "clear_la.png")
    Image.fromarray(np.full((32, 32), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")  # 16-bit white
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 9, 9, 9] + [0] * 762)
    pal.save(tmp_path / "pal.png", transparency=1)
    names = ["white.png", "clear.png", "clear_la.png", "deep.png", "pal.png"]
    batch = ImageTextCollator(processor, tmp_path, flip="none")([{"title": "t", "path": n} for n in names])
    pixels = batch["pixel_values"]
    assert torch.isfinite(pixels).all()
    for i in range(1, len(names)):
        torch.testing.assert_close(pixels[i], pixels[0], msg=names[i])
    # Half-grey 16-bit is scaled (128), not clipped to white as Pillow's convert() would.
    Image.fromarray(np.full((8, 8), 257 * 128, dtype=np.uint16)).save(tmp_path / "grey16.png")
    assert open_image(tmp_path / "grey16.png").getpixel((3, 3)) == (128, 128, 128)


# -------------------------------------------------------- extra columns in the query file


def test_query_file_extra_columns_and_submission_columns_survive_retrieval(
    tmp_path, make_dataset_dir, tiny_model_dir, capsys
):
    root = make_dataset_dir(tmp_path, n_queries=3, n_gallery=4)
    (root / "test_query.csv").write_text(
        "id,title,shop\n1,查询0号女装,a\n2,查询1号,b\n3,查询2号,c\n", encoding="utf-8"
    )
    (root / "sample_submit.csv").write_text(
        "id,title,path,extra\n1,查询0号女装,,e1\n2,查询1号,,e2\n3,查询2号,,e3\n", encoding="utf-8"
    )
    out = tmp_path / "pred" / "submit.csv"
    code, text = _run_cli(
        capsys,
        "retrieve",
        "--model_name_or_path",
        tiny_model_dir,
        "--data_dir",
        root,
        "--output",
        out,
        "--cache_dir",
        "",
        "--device",
        "cpu",
    )
    assert code == 0, text
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["id", "title", "path", "extra"]
    assert list(sub["extra"]) == ["e1", "e2", "e3"] and list(sub["id"]) == ["1", "2", "3"]
    assert set(sub["path"]) <= {f"gal_{j:03d}.jpg" for j in range(4)}


# ------------------------------------------------- several captions per image + sampler


def test_duplicate_paths_with_different_titles_are_allowed_and_counted(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_train_images=6, captions_per_image=3)
    data = load_competition_data(root, val_size=0)
    assert len(data.train) == 18 and data.report.multi_caption_images == 6
    assert has_duplicate_images(list(data.train["path"]))


def _random_paths(rng: random.Random) -> list[str]:
    paths: list[str] = []
    for i in range(rng.randint(1, 60)):
        paths += [f"img{i}.jpg"] * rng.choice([1, 1, 1, 2, 3, rng.randint(1, 15)])
    rng.shuffle(paths)
    return paths


def test_unique_image_sampler_never_repeats_an_image_in_a_batch():
    for trial in range(200):
        rng = random.Random(trial)
        paths = _random_paths(rng)
        size = rng.randint(1, 12)
        sampler = UniqueImageSampler(paths, group_size=size, seed=trial)
        counts = Counter(paths)
        cap = max(1, len(paths) // size)
        for epoch in range(2):
            sampler.set_epoch(epoch)
            order = list(sampler)
            assert len(order) == len(sampler) == len(set(order))
            for start in range(0, len(order), size):
                group = [paths[i] for i in order[start : start + size]]
                assert len(group) == len(set(group)), (trial, epoch, group)
        if max(counts.values()) <= cap:  # placeable: every row every epoch
            assert sampler.num_unplaced == 0 and sorted(order) == list(range(len(paths)))


def test_unique_image_sampler_is_deterministic_per_seed_and_epoch():
    paths = [f"{i % 7}.jpg" for i in range(40)]
    a, b = UniqueImageSampler(paths, 4, seed=1), UniqueImageSampler(paths, 4, seed=1)
    assert list(a) == list(b)
    assert a.order(0) != a.order(1) and a.order(0) != UniqueImageSampler(paths, 4, seed=2).order(0)
    b.set_epoch(1)
    assert list(b) == a.order(1)


def test_unique_image_sampler_reports_rows_it_cannot_place():
    # 18 rows, batches of 4: 4 full batches, so an image can appear at most 4 times per epoch.
    paths = ["hot.jpg"] * 6 + [f"{i}.jpg" for i in range(12)]
    sampler = UniqueImageSampler(paths, group_size=4, seed=0)
    assert sampler.num_unplaced == 2 and len(sampler) == 16
    seen = set()
    for epoch in range(12):
        order = sampler.order(epoch)
        hot = [k // 4 for k, i in enumerate(order) if paths[i] == "hot.jpg"]
        assert sorted(hot) == [0, 1, 2, 3]  # once in every batch
        seen |= {i for i in order if paths[i] == "hot.jpg"}
    assert seen == set(range(6)), "a different subset of captions is left out each epoch"


def test_unique_image_sampler_holds_across_processes():
    """accelerate's BatchSamplerShard deals batch i to process i % W: each global step is duplicate-free."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    paths = [f"{i % 9}.jpg" for i in range(72)]
    per_device, world = 4, 2
    sampler = UniqueImageSampler(paths, group_size=per_device * world, seed=0)
    shards = [
        list(
            BatchSamplerShard(BatchSampler(sampler, per_device, drop_last=True), num_processes=world, process_index=p)
        )
        for p in range(world)
    ]
    assert len(shards[0]) == len(shards[1]) == 9
    for step in range(len(shards[0])):
        rows = shards[0][step] + shards[1][step]
        assert len({paths[i] for i in rows}) == per_device * world


def test_sampler_choice_follows_the_option():
    multi = datasets.Dataset.from_dict({"title": list("abcd"), "path": ["x", "x", "y", "z"]})
    single = datasets.Dataset.from_dict({"title": list("abc"), "path": ["x", "y", "z"]})
    pick = lambda ds, mode: unique_image_sampler_for(ds, batch_size=2, world_size=1, seed=0, mode=mode)  # noqa: E731
    assert isinstance(pick(multi, None), UniqueImageSampler)
    assert pick(single, None) is None and pick(multi, False) is None
    assert isinstance(pick(single, True), UniqueImageSampler)
    assert unique_image_sampler_for(multi, batch_size=2, world_size=3, seed=0, mode=True).group_size == 6


def test_trainer_batches_hold_each_image_once(tiny_model_dir, processor, tmp_path):
    from transformers import ChineseCLIPModel

    from cnclip_lora.config import CnClipTrainingArguments
    from cnclip_lora.training.trainer import CnClipLoraTrainer

    paths = [f"{i % 6}.jpg" for i in range(24)]  # every image has 4 captions
    dataset = datasets.Dataset.from_dict({"title": [f"t{i}" for i in range(24)], "path": paths})

    def collate(rows):
        return {"paths": [r["path"] for r in rows]}

    def make(**extra):
        args = CnClipTrainingArguments(
            output_dir=str(tmp_path), per_device_train_batch_size=6, use_cpu=True, report_to="none", seed=3, **extra
        )
        return CnClipLoraTrainer(
            model=ChineseCLIPModel.from_pretrained(tiny_model_dir),
            args=args,
            train_dataset=dataset,
            data_collator=collate,
            processing_class=processor,
        )

    trainer = make()
    assert isinstance(trainer._get_train_sampler(), UniqueImageSampler)
    batches = [b["paths"] for b in trainer.get_train_dataloader()]
    assert len(batches) == 4 and all(len(set(b)) == 6 for b in batches)
    assert not isinstance(make(unique_images_per_batch=False)._get_train_sampler(), UniqueImageSampler)
    with pytest.raises(ConfigError, match="--unique_images_per_batch true needs --train_sampling_strategy random"):
        make(unique_images_per_batch=True, train_sampling_strategy="sequential")._get_train_sampler()


# ----------------------------------------------------------------- retrieval edge cases


def test_empty_gallery_is_a_clear_error(tmp_path, make_dataset_dir, tiny_model_dir, capsys):
    root = make_dataset_dir(tmp_path, n_gallery=0, answers=False)
    code, text = _run_cli(
        capsys,
        "retrieve",
        "--model_name_or_path",
        tiny_model_dir,
        "--data_dir",
        root,
        "--output",
        tmp_path / "submit.csv",
        "--cache_dir",
        "",
    )
    assert code == 2
    assert "the gallery is empty (every image is named in train.csv)" in text
    assert not (tmp_path / "submit.csv").exists()


def test_more_queries_than_gallery_images_with_hungarian(tmp_path, make_dataset_dir, tiny_model_dir, capsys):
    root = make_dataset_dir(tmp_path, n_gallery=2, n_queries=5)
    argv = [
        "retrieve",
        "--model_name_or_path",
        tiny_model_dir,
        "--data_dir",
        root,
        "--output",
        tmp_path / "submit.csv",
        "--cache_dir",
        "",
        "--device",
        "cpu",
    ]
    code, text = _run_cli(capsys, *argv, "--assign", "hungarian")
    assert code == 2
    assert re.search(
        r"needs at least as many gallery images as queries: 5 queries, 2 images; use --assign argmax", text
    )
    assert not (tmp_path / "submit.csv").exists()
    code, text = _run_cli(capsys, *argv, "--assign", "argmax")  # the documented alternative works
    assert code == 0, text
    assert len(pd.read_csv(tmp_path / "submit.csv")) == 5


# ------------------------------------------------------------------------ safe loading


@pytest.mark.parametrize("name", ["adapter_model.bin", "adapter_model.pt", "adapter_model.pth"])
def test_pickled_adapter_is_refused_by_the_cli(tmp_path, make_dataset_dir, tiny_model_dir, capsys, name):
    root = make_dataset_dir(tmp_path)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (adapter / name).write_bytes(b"\x80\x04not really a pickle")
    code, text = _run_cli(
        capsys,
        "retrieve",
        "--model_name_or_path",
        tiny_model_dir,
        "--data_dir",
        root,
        "--adapter",
        adapter,
        "--output",
        tmp_path / "submit.csv",
        "--cache_dir",
        "",
    )
    assert code == 2
    assert re.search(rf"no adapter_model\.safetensors, only pickled weights \({re.escape(name)}\).*execute code", text)
    assert not (tmp_path / "submit.csv").exists()


def test_pickled_base_checkpoint_is_refused_by_the_cli(tmp_path, make_dataset_dir, tiny_model_dir, capsys):
    import shutil

    root = make_dataset_dir(tmp_path)
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    for weights in base.glob("*.safetensors"):
        weights.rename(weights.with_name("pytorch_model.bin"))
    code, text = _run_cli(
        capsys,
        "retrieve",
        "--model_name_or_path",
        base,
        "--data_dir",
        root,
        "--output",
        tmp_path / "s.csv",
        "--cache_dir",
        "",
    )
    assert code == 2 and "has only pickled weights (pytorch_model.bin)" in text


def test_trust_remote_code_is_off_unless_asked(tiny_model_dir, monkeypatch):
    from transformers import AutoConfig, ChineseCLIPModel

    from cnclip_lora import modeling
    from cnclip_lora.commands.train import parse_train_args
    from cnclip_lora.config import ModelArguments
    from cnclip_lora.retrieve.arguments import (
        EvaluateArguments,
        ReportArguments,
        RetrieveArguments,
        ServeArguments,
    )

    assert inspect.signature(modeling.load_model_and_processor).parameters["trust_remote_code"].default is False
    assert parse_train_args(["--model_name_or_path", "m", "--use_cpu", "true"])[0].trust_remote_code is False
    assert ModelArguments(model_name_or_path="m").trust_remote_code is False
    for arguments in (RetrieveArguments, EvaluateArguments, ReportArguments, ServeArguments):
        assert "trust_remote_code" not in {f for f in arguments.__dataclass_fields__}, arguments.__name__
    seen: list[dict] = []
    real_config, real_model = AutoConfig.from_pretrained, ChineseCLIPModel.from_pretrained

    def spy(real):
        def wrapper(*args, **kwargs):
            seen.append(kwargs)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(AutoConfig, "from_pretrained", spy(real_config))
    monkeypatch.setattr(ChineseCLIPModel, "from_pretrained", spy(real_model))
    modeling.load_model_and_processor(str(tiny_model_dir))
    assert seen and all(not kw.get("trust_remote_code") for kw in seen)
    assert any(kw.get("use_safetensors") is True for kw in seen)
    # Nowhere in the package is it switched on by a literal.
    package = Path(modeling.__file__).parent
    assert not [p.name for p in package.glob("*.py") if re.search(r"trust_remote_code\s*=\s*True", p.read_text())]


# ------------------------------------------------------------- every problem in one run


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_check_data_reports_every_problem_with_counts(tmp_path, make_dataset_dir, capsys, pixel_limit):
    root = make_dataset_dir(tmp_path, n_train_images=8)
    image_dir = root / "image"
    (image_dir / "train_005.jpg").write_bytes(b"not a jpeg at all")  # corrupt
    Image.new("RGB", (40, 40)).save(image_dir / "train_006.jpg", "JPEG")  # over the limit below
    with open(root / "train.csv", "a", encoding="utf-8") as fh:
        fh.write("缺图的标题\tnope.jpg\n")  # missing image
        fh.write("缺图的标题二\tnope2.jpg\n")  # missing image
        fh.write("  \ttrain_001.jpg\n")  # empty title
        fh.write("云思木想2019秋装新款0号连衣裙款式0\ttrain_000.jpg\n")  # duplicate row
        fh.write("多一列\ttrain_002.jpg\textra\n")  # malformed row
        fh.write("绝对路径\t/etc/passwd\n")  # bad path
    (root / "test_query.csv").write_text("id,title\n1,查询0号女装\n2,\n3,查询2号\n", encoding="utf-8")
    pixel_limit.setenv(MAX_PIXELS_ENV, "1000")
    code, text = _run_cli(capsys, "check-data", root)
    assert code != 0
    expected = {
        "corrupt image": 2,
        "missing image": 2,
        "empty title": 2,
        "duplicate row": 1,  # one title in the queries
        "malformed row": 1,
        "bad path": 1,
    }
    for kind, count in expected.items():
        assert f"[fatal] {kind} ({count}):" in text, (kind, text)
    assert "nope.jpg" in text and "nope2.jpg" in text and "1,600 pixels" in text
    assert re.search(r"test_query\.csv, line 3: empty query title", text)
    assert re.search(r"train\.csv, line \d+: .*--skip_bad_rows|--skip_bad_rows", text)
    assert "NOT OK" in text
    n_fatal = int(re.search(r"Problems: (\d+) fatal", text).group(1))
    assert n_fatal == sum(expected.values())


def test_sampler_logs_rows_it_leaves_out(caplog):
    dataset = datasets.Dataset.from_dict({"path": ["hot.jpg"] * 6 + [f"{i}.jpg" for i in range(12)]})
    with caplog.at_level("WARNING", logger="cnclip_lora.training.sampler"):
        sampler = unique_image_sampler_for(dataset, batch_size=2, world_size=2, seed=0, mode=None)
    assert sampler.num_unplaced == 2
    assert re.search(
        r"2 caption row\(s\) per epoch left out: .*\(max 6\) than an epoch has batches \(4\)", caplog.text
    )
