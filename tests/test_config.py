"""Training arguments: documented defaults, user values win, recipe files, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnclip_lora.commands.train import parse_train_args
from cnclip_lora.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_seed_recipe_and_task_defaults(tmp_path):
    model, data, lora, args = parse_train_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path)])
    assert (lora.lora_r, lora.lora_alpha, data.max_length, data.flip) == (64, 96, 52, "random")
    assert (data.title_normalization, data.fast_decode) == ("official", False)  # the official input path
    assert args.remove_unused_columns is False
    assert args.ddp_find_unused_parameters is False
    assert args.dataloader_drop_last is True
    assert args.learning_rate == pytest.approx(4e-5)
    assert lora.apply_lora_kwargs()["targets"] is None


def test_user_values_override_task_defaults(tmp_path):
    _, _, _, args = parse_train_args(
        [
            "--model_name_or_path",
            "m",
            "--output_dir",
            str(tmp_path),
            "--remove_unused_columns",
            "true",
            "--dataloader_drop_last",
            "false",
            "--learning_rate",
            "1e-3",
        ]
    )
    assert args.remove_unused_columns is True
    assert args.dataloader_drop_last is False
    assert args.learning_rate == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "flags,split,non_blocking",
    [
        ([], False, True),
        (["--accelerator_config", '{"split_batches": true}'], True, True),
        (["--accelerator_config", '{"non_blocking": false}'], False, False),
        # --use_cpu turns pinning off: the package's default then stays off (no Trainer warning about it)
        (["--use_cpu", "true"], False, False),
        (["--use_cpu", "true", "--accelerator_config", '{"non_blocking": true}'], False, True),
    ],
)
def test_batches_are_copied_to_the_device_asynchronously_unless_the_user_says_no(
    tiny_model_dir, tmp_path, flags, split, non_blocking
):
    """The default reaches accelerate's DataLoader wrapper; a user's accelerator_config keeps it
    unless it sets non_blocking itself."""
    from transformers import ChineseCLIPModel

    from cnclip_lora.training.trainer import CnClipLoraTrainer

    _, _, _, args = parse_train_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path), *flags])
    assert (args.accelerator_config.split_batches, args.accelerator_config.non_blocking) == (split, non_blocking)
    trainer = CnClipLoraTrainer(model=ChineseCLIPModel.from_pretrained(tiny_model_dir), args=args)
    assert trainer.accelerator.dataloader_config.non_blocking is non_blocking


@pytest.mark.parametrize(
    "flags,persistent",
    [
        ([], False),
        (["--dataloader_num_workers", "2"], True),
        (["--dataloader_num_workers", "2", "--dataloader_persistent_workers", "false"], False),
    ],
)
def test_workers_persist_across_epochs_unless_the_user_says_no(tmp_path, flags, persistent):
    _, _, _, args = parse_train_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path), *flags])
    assert args.dataloader_persistent_workers is persistent


def test_target_modules_are_split_on_commas(tmp_path):
    _, _, lora, _ = parse_train_args(
        ["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--lora_target_modules", "query, key ,q_proj"]
    )
    assert lora.apply_lora_kwargs()["targets"] == ["query", "key", "q_proj"]


def test_yaml_recipe_is_read_and_later_flags_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model_name_or_path: m\noutput_dir: {tmp_path}\nlora_r: 8\nbf16: false\nnum_train_epochs: 3\n")
    _, _, lora, args = parse_train_args([str(recipe), "--num_train_epochs", "5"])
    assert lora.lora_r == 8
    assert args.num_train_epochs == 5


def test_shipped_vit_h14_recipe_parses():
    recipe = ROOT / "examples" / "vit-h14-seed-recipe.yaml"
    model, data, lora, args = parse_train_args([str(recipe), "--bf16", "false"])
    assert model.model_name_or_path == "OFA-Sys/chinese-clip-vit-huge-patch14"
    assert (lora.lora_r, lora.lora_alpha, data.max_length) == (64, 96, 52)
    assert args.activation_checkpointing is True
    assert args.metric_for_best_model == "eval_t2i_MR"


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--flip", "sometimes"], "flip"),
        (["--val_size", "-1"], "val_size"),
        (["--val_size", "2.5"], "val_size"),
        (["--lora_r", "0"], "lora_r"),
        (["--max_length", "1"], "max_length"),
        (["--not_an_option", "1"], "unrecognized arguments: --not_an_option"),
    ],
)
def test_bad_values_fail_naming_the_option(tmp_path, flags, match):
    with pytest.raises((ConfigError, SystemExit)) as info:
        parse_train_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path), *flags])
    if info.type is ConfigError:
        assert match in str(info.value)


def test_missing_recipe_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_train_args([str(tmp_path / "nope.yaml")])


def test_recipe_values_keep_their_types(tmp_path):
    """A YAML list, a mapping and numbers arrive as values, not as re-parsed flag strings."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model_name_or_path: m\n"
        f"output_dir: {tmp_path}\n"
        "lora_target_modules: [query, value, q_proj]\n"
        "accelerator_config: {split_batches: true}\n"
        "learning_rate: 3e-5\n"  # YAML reads this spelling as a string: typed like the flag
        "val_size: 500\n"
        "pad_to_max_length: false\n",
        encoding="utf-8",
    )
    _, data, lora, args = parse_train_args([str(recipe)])
    assert lora.apply_lora_kwargs()["targets"] == ["query", "value", "q_proj"]
    assert args.accelerator_config.split_batches is True
    assert args.accelerator_config.non_blocking is True  # the package's default is still merged in
    assert args.learning_rate == 3e-5 and isinstance(args.learning_rate, float)
    assert data.val_size == 500.0 and isinstance(data.val_size, float)
    assert data.pad_to_max_length is False


def test_precedence_is_defaults_recipe_flags_then_python_overrides(tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(
        f'{{"model_name_or_path": "m", "output_dir": "{tmp_path}", "lora_r": 8, "lora_alpha": 16, '
        '"num_train_epochs": 3}',
        encoding="utf-8",
    )
    _, _, lora, args = parse_train_args(
        [str(recipe), "--lora_r", "12", "--num_train_epochs", "5"], {"num_train_epochs": 7, "bf16": False}
    )
    assert (lora.lora_r, lora.lora_alpha, args.num_train_epochs, args.bf16) == (12, 16, 7.0, False)


def test_python_overrides_take_real_values_and_supply_required_options(tmp_path):
    model, _, lora, args = parse_train_args(
        [],
        {
            "model_name_or_path": "m",
            "output_dir": str(tmp_path),
            "lora_target_modules": ["query", "key"],
            "accelerator_config": {"split_batches": True},
            "report_to": ["none"],
            "use_cpu": True,
            "overwrite_output_dir": "true",
        },  # a flag-style string still reads as the flag would
    )
    assert model.model_name_or_path == "m"
    assert lora.apply_lora_kwargs()["targets"] == ["query", "key"]
    assert args.accelerator_config.split_batches is True
    assert args.use_cpu is True and args.overwrite_output_dir is True
    assert args.report_to == []


@pytest.mark.parametrize(
    "recipe_text, match",
    [
        ("lora_rank: 8\n", "unknown option 'lora_rank'"),
        ("lora_r: eight\n", "lora_r"),
        ("lora_r: 8.5\n", "lora_r must be a number"),
        ("bf16: maybe\n", "bf16"),
        ("use_cpu: 2\n", "use_cpu must be true or false"),
        ("flip: sometimes\n", "flip 'sometimes' is not one of"),
        ("- model_name_or_path\n", "expected a mapping"),
        ("lora_r: [8\n", "not valid YAML"),
    ],
)
def test_bad_recipe_values_name_the_file_and_the_option(tmp_path, recipe_text, match):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        f"model_name_or_path: m\noutput_dir: {tmp_path}\n" + recipe_text
        if not recipe_text.startswith("-")
        else recipe_text,
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=match) as info:
        parse_train_args([str(recipe)])
    assert "bad.yaml" in str(info.value)


def test_bad_python_override_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="max_steps must be a number"):
        parse_train_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path)], {"max_steps": [1, 2]})
    with pytest.raises(ConfigError, match="unknown option 'max_step'"):
        parse_train_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path)], {"max_step": 1})


def test_train_options_in_python_parse_like_the_same_flags(tmp_path):
    """``train(**options)`` and ``cnclip-lora train --flags`` build the same four dataclasses, defaults
    included (a boolean defaulting to true must not take its ``--no_X`` flag's default)."""
    import dataclasses

    from cnclip_lora.config import train_arguments

    flags = parse_train_args(
        ["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--use_cpu", "true", "--lora_r", "8"]
    )
    python = train_arguments({"model_name_or_path": "m", "output_dir": str(tmp_path), "use_cpu": True, "lora_r": 8})
    for a, b in zip(flags, python):
        differ = {
            f.name: (getattr(a, f.name), getattr(b, f.name))
            for f in dataclasses.fields(a)
            if getattr(a, f.name) != getattr(b, f.name)
        }
        assert not differ, f"{type(a).__name__}: {differ}"


def test_a_yaml_recipe_giving_a_key_twice_is_refused_naming_both_lines(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: m\nlearning_rate: 1e-4\noutput_dir: o\nlearning_rate: 4e-5\n")
    with pytest.raises(ConfigError, match=r"'learning_rate' is given twice \(lines 2 and 4\)"):
        parse_train_args([str(recipe)])


def test_a_json_recipe_giving_a_key_twice_is_refused(tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text('{"model_name_or_path": "m", "output_dir": "o", "lora_r": 8, "lora_r": 16}')
    with pytest.raises(ConfigError, match="'lora_r' is given twice"):
        parse_train_args([str(recipe)])


@pytest.mark.parametrize("encoding", ["gbk", "utf-16", "utf-8-sig"])
def test_recipes_in_the_encodings_of_the_data_files_are_read(tmp_path, encoding):
    recipe = tmp_path / "r.yaml"
    text = "# 中文注释：学习率\nmodel_name_or_path: m\noutput_dir: o\nlora_r: 12\n"
    recipe.write_bytes(text.encode(encoding))
    _, _, lora, _ = parse_train_args([str(recipe)])
    assert lora.lora_r == 12


def test_a_recipe_that_is_not_text_is_refused_naming_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ConfigError, match=r"r\.yaml"):
        parse_train_args([str(recipe)])
