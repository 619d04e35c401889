"""Files in examples/ run as shipped: the seed recipe, shrunk to a tiny model on CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from transformers.integrations import get_available_reporting_integrations

from cnclip_lora.commands.train import parse_train_args, train_from_argv

ROOT = Path(__file__).resolve().parents[1]
RECIPE = Path(__file__).resolve().parents[1] / "examples" / "vit-h14-seed-recipe.yaml"


def test_seed_recipe_trains_on_cpu_with_a_tiny_model(tiny_model_dir, demo_dir, tmp_path, caplog):
    # Only the model, data, device and size of the run change; report_to, persistent workers,
    # eval/save strategies and load_best_model_at_end stay as shipped.
    argv = [
        str(RECIPE),
        "--model_name_or_path",
        str(tiny_model_dir),
        "--data_dir",
        str(demo_dir),
        "--output_dir",
        str(tmp_path / "out"),
        "--use_cpu",
        "true",
        "--bf16",
        "false",
        "--torch_compile",
        "false",
        "--val_size",
        "8",
        "--num_train_epochs",
        "1",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "8",
        "--dataloader_num_workers",
        "0",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
    ]
    with caplog.at_level(logging.INFO):
        result = train_from_argv(argv)
    assert (result.output_dir / "adapter_model.safetensors").is_file()
    assert "eval_t2i_MR" in result.eval_metrics
    if "tensorboard" not in get_available_reporting_integrations():
        assert caplog.text.count("--report_to tensorboard: not installed") == 1


def test_persistent_workers_only_with_workers(tmp_path):
    args = parse_train_args(
        [
            "--model_name_or_path",
            "m",
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
            "--dataloader_num_workers",
            "0",
            "--dataloader_persistent_workers",
            "true",
        ]
    )[3]
    assert args.dataloader_persistent_workers is False
    args = parse_train_args(
        [
            "--model_name_or_path",
            "m",
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
            "--dataloader_num_workers",
            "2",
        ]
    )[3]
    assert args.dataloader_persistent_workers is True


def test_missing_report_backend_is_dropped_before_any_model_loads(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        args = parse_train_args(
            ["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "wandb"]
        )[3]
    if "wandb" not in get_available_reporting_integrations():
        assert "wandb" not in args.report_to and "not installed" in caplog.text


def test_the_tiny_cpu_recipe_is_the_demos():
    """``examples/tiny-cpu.yaml`` (the README's first training command) trains exactly as ``cnclip-lora demo``."""
    import yaml

    from cnclip_lora.demo.run import DEMO_TRAIN_FLAGS

    recipe = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text(encoding="utf-8"))
    assert recipe == dict(DEMO_TRAIN_FLAGS)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_hour = readme.split("<!-- docs-test: run -->", 1)[1].split("```", 2)[1]
    assert "cnclip-lora train examples/tiny-cpu.yaml" in first_hour
    training = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    assert "cnclip-lora train examples/tiny-cpu.yaml" in training.split("```", 2)[1]  # the page's first command


@pytest.fixture(scope="module")
def cnclip_data(tmp_path_factory):
    from cnclip_lora.demo.cnclip_data import write_cnclip_layout
    from cnclip_lora.demo.data import make_demo_data

    root = tmp_path_factory.mktemp("recipes")
    make_demo_data(root / "competition", seed=4, n_train=48, n_queries=8, n_distractors=4, image_size=32)
    write_cnclip_layout(root / "competition", root / "data", seed=0)
    return root / "data"


@pytest.mark.parametrize("recipe", ["muge-vit-b16", "muge-vit-h14", "flickr30k-cn-vit-b16", "flickr30k-cn-vit-h14"])
def test_the_published_table_recipes_start_on_a_tiny_model(recipe, cnclip_data, tiny_model_dir, tmp_path):
    """The MUGE / Flickr30K-CN recipes parse and run a step as shipped, on Chinese-CLIP's layout;
    only the model, data, device and size of the run change."""
    argv = [
        str(ROOT / "examples" / f"{recipe}.yaml"),
        "--model_name_or_path", str(tiny_model_dir), "--data_dir", str(cnclip_data),
        "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--bf16", "false",
        "--max_steps", "1", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
        "--dataloader_num_workers", "0", "--lora_r", "4", "--lora_alpha", "8",
    ]  # fmt: skip
    result = train_from_argv(argv)
    assert (result.output_dir / "adapter_model.safetensors").is_file()
