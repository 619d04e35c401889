"""A run that learns nothing says so, and the saved card states the recipe that produced it."""

from __future__ import annotations

import logging

import pytest

from cnclip_lora import train


@pytest.fixture(scope="module")
def frozen_run(tiny_model_dir, demo_dir, tmp_path_factory):
    """A run with learning rate 0: the adapter stays the base model, so nothing is learned."""
    out = tmp_path_factory.mktemp("frozen") / "adapter"
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("cnclip_lora").addHandler(handler)
    try:
        train(model_name_or_path=str(tiny_model_dir), data_dir=str(demo_dir), output_dir=str(out), use_cpu=True,
              max_steps=2, learning_rate=0.0, warmup_steps=0, per_device_train_batch_size=8, lora_r=4,
              save_strategy="no", report_to="none", dataloader_num_workers=0)  # fmt: skip
    finally:
        logging.getLogger("cnclip_lora").removeHandler(handler)
    return out, [r.getMessage() for r in records if r.levelno >= logging.WARNING]


def test_a_run_no_better_than_the_base_says_so_with_the_causes(frozen_run):
    _, warnings = frozen_run
    said = [w for w in warnings if "nothing was learned" in w]
    assert len(said) == 1, warnings
    assert "--learning_rate 0" in said[0] and "examples/tiny-cpu.yaml" in said[0]


def test_the_card_states_the_recipe(frozen_run):
    out, _ = frozen_run
    card = (out / "README.md").read_text(encoding="utf-8")
    recipe = card.split("## Training recipe", 1)[1].split("## ", 1)[0]
    for setting, value in (("learning rate", "`0`"), ("max steps", "`2`"), ("batch per device", "`8`")):
        row = next(line for line in recipe.splitlines() if line.startswith(f"| {setting}"))
        assert value in row, row
    assert "## LoRA configuration" in card and "## Preprocessing" in card


def test_accelerates_cpu_launcher_starting_one_of_several_processes_is_refused(tiny_model_dir, demo_dir, tmp_path,
                                                                              monkeypatch):  # fmt: skip
    """What `accelerate launch --cpu --num_processes 2` leaves in the environment of the one process it starts."""
    from cnclip_lora.errors import ConfigError

    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="started one.*torchrun --nproc_per_node"):
        train(model_name_or_path=str(tiny_model_dir), data_dir=str(demo_dir), output_dir=str(tmp_path / "o"),
              use_cpu=True, max_steps=1)  # fmt: skip
    assert not (tmp_path / "o").exists()
