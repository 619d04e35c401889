"""The run record (cnclip_lora.json): typed round trip, old records, the layout older versions read."""

from __future__ import annotations

import json

import pytest

from cnclip_lora.adapter.record import (
    FORMAT_VERSION,
    RECORD_FILE,
    DataSummary,
    LoraSummary,
    Preprocessing,
    RecordError,
    RunRecord,
    SplitRecord,
)

# A record exactly as training wrote it before the record was typed (format 1, every section).
PREVIOUS_RECORD = {
    "format_version": 1,
    "preprocessing": {
        "max_length": 40,
        "train_flip": "always",
        "exif_transpose": True,
        "draft": True,
        "title_normalization": "official",
        "inference_flip": True,
    },
    "base_model": "OFA-Sys/chinese-clip-vit-base-patch16",
    "base_identity": {
        "name": "OFA-Sys/chinese-clip-vit-base-patch16",
        "revision": None,
        "hub_commit": "abc",
        "architecture": {"model_type": "chinese_clip", "vision.image_size": 224},
        "vocab_sha256": "0" * 64,
        "weights": {"logit_scale": {"shape": [], "values": [4.6]}},
    },
    "data": {
        "data_dir": "/data/xfdata",
        "n_train": 4500,
        "n_val": 500,
        "val_gallery_size": 500,
        "skipped_rows": 2,
        "truncated_titles": 7,
        "title_padding": "longest, multiple of 8",
        "pixel_cache": False,
    },
    "split": {"val_size": 0.1, "split_seed": 42, "n_held_out_images": 500, "held_out_sha256": "f" * 64},
    "lora": {
        "r": 64,
        "alpha": 96,
        "dropout": 0.0,
        "targets": "default: Q/K/V of both towers",
        "adapted_modules": {"text": 36, "vision": 96},
    },
}

# An early record: no format version, no draft / title_normalization, no split or base identity.
OLDEST_RECORD = {
    "preprocessing": {"max_length": 52, "train_flip": "always", "inference_flip": True, "exif_transpose": True},
    "base_model": "/models/base",
    "data": {"data_dir": "xfdata", "n_train": 10},
    "lora": {"r": 4, "alpha": 8, "dropout": 0.05, "targets": ["query", "key"]},
}


def _write(folder, payload) -> None:
    (folder / RECORD_FILE).write_text(json.dumps(payload), encoding="utf-8")


def test_inference_flip_only_when_every_training_image_was_flipped():
    assert Preprocessing(train_flip="always").inference_flip is True
    assert Preprocessing(train_flip="random").inference_flip is False
    assert Preprocessing(train_flip="none").inference_flip is False


def test_record_round_trips(tmp_path):
    prep = Preprocessing(max_length=40, train_flip="always", draft=False)
    record = RunRecord(prep, data=DataSummary(n_train=3), split=SplitRecord(val_size=5, split_seed=1))
    record.save(tmp_path)
    saved = json.loads((tmp_path / RECORD_FILE).read_text())
    assert saved["format_version"] == FORMAT_VERSION
    assert saved["preprocessing"]["inference_flip"] is True
    assert saved["data"] == {"n_train": 3}
    assert RunRecord.load(tmp_path) == record
    assert Preprocessing.load(tmp_path) == prep
    assert Preprocessing.load(tmp_path / "missing") is None and RunRecord.load(tmp_path / "missing") is None


def test_a_record_written_before_the_typed_record_loads_and_saves_back_unchanged(tmp_path):
    _write(tmp_path, PREVIOUS_RECORD)
    record = RunRecord.load(tmp_path)
    assert record.preprocessing == Preprocessing(max_length=40, train_flip="always", draft=True)
    assert record.data.n_train == 4500 and record.data.pixel_cache is False
    assert record.split == SplitRecord(val_size=0.1, split_seed=42, n_held_out_images=500, held_out_sha256="f" * 64)
    assert record.lora.adapted_modules == {"text": 36, "vision": 96}
    assert record.base_identity == PREVIOUS_RECORD["base_identity"]
    out = tmp_path / "again"
    out.mkdir()
    record.save(out)
    # Same keys, values and order: readers of the earlier releases read what this version writes.
    assert json.loads((out / RECORD_FILE).read_text()) == PREVIOUS_RECORD
    assert list(json.loads((out / RECORD_FILE).read_text())) == list(PREVIOUS_RECORD)


def test_the_oldest_record_shape_loads_with_the_behaviour_it_was_trained_with(tmp_path):
    from cnclip_lora.adapter.base_identity import recorded_base_identity
    from cnclip_lora.adapter.split_record import recorded_split

    _write(tmp_path, OLDEST_RECORD)
    record = RunRecord.load(tmp_path)
    assert record.format_version == 1
    # Titles were NFKC-folded before the field existed; new runs default to the official path.
    assert record.preprocessing.title_normalization == "nfkc" != Preprocessing().title_normalization
    assert record.preprocessing.draft is False and record.preprocessing.inference_flip is True
    assert record.split is None and recorded_split(tmp_path) is None
    assert record.base_identity is None and recorded_base_identity(tmp_path) is None
    assert record.lora == LoraSummary(r=4, alpha=8, dropout=0.05, targets=["query", "key"])
    assert record.data.n_val is None


def test_sections_and_fields_this_version_does_not_know_are_kept(tmp_path):
    _write(tmp_path, {**PREVIOUS_RECORD, "notes": {"by": "hand"}, "data": {**PREVIOUS_RECORD["data"], "extra": 1}})
    record = RunRecord.load(tmp_path)
    assert record.extra == {"notes": {"by": "hand"}} and record.data.extra == {"extra": 1}
    record.save(tmp_path)
    saved = json.loads((tmp_path / RECORD_FILE).read_text())
    assert saved["notes"] == {"by": "hand"} and saved["data"]["extra"] == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, found list"),
        (json.dumps({**PREVIOUS_RECORD, "format_version": FORMAT_VERSION + 1}), "newer cnclip-lora"),
        (json.dumps({**PREVIOUS_RECORD, "format_version": "1"}), "format_version must be a whole number"),
        (json.dumps({"preprocessing": {"train_flip": "sideways"}}), "train_flip must be one of always, random, none"),
        (json.dumps({"preprocessing": {"max_length": "52"}}), "max_length must be a whole number"),
        (json.dumps({"preprocessing": {"draft": "false"}}), "draft must be true or false"),
        (json.dumps({"preprocessing": ["max_length", 52]}), "'preprocessing' must be an object"),
    ],
)
def test_an_unreadable_record_is_refused_naming_the_file_and_the_problem(tmp_path, content, message):
    (tmp_path / RECORD_FILE).write_text(content, encoding="utf-8")
    with pytest.raises(RecordError, match=message) as info:
        RunRecord.load(tmp_path)
    assert str(tmp_path / RECORD_FILE) in str(info.value)


def test_every_preprocessing_default_is_the_training_default(tmp_path):
    from cnclip_lora.config import DataArguments
    from cnclip_lora.inputs.collate import ImageTextCollator

    args, prep, collate = DataArguments(), Preprocessing(), ImageTextCollator(processor=None, image_dir=tmp_path)
    assert prep.train_flip == args.flip == collate.flip
    assert prep.max_length == args.max_length == collate.max_length
    assert prep.title_normalization == args.title_normalization == collate.title_normalization
    assert prep.draft == args.fast_decode == collate.draft


def test_the_model_card_reads_an_old_record(tmp_path):
    from cnclip_lora.adapter.model_card import build_model_card

    _write(tmp_path, OLDEST_RECORD)
    card = build_model_card(tmp_path)
    assert "titles prepared `nfkc`, tokenised with `max_length=52`" in card
    assert "retrieval images (gallery): flipped left-right" in card
    assert "- training pairs: 10" in card and "- validation queries (held out from training): n/a" in card
