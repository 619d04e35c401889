"""``torchrun -m cnclip_lora train`` on two CPU processes == one process on the concatenated batch.

Two processes with ``--per_device_train_batch_size 4`` and one with 8 see the same global batch
of 8 rows in their first step (the same seeded permutation, cut into per-process batches in rank
order). The contrastive loss is gathered over that batch, so the logged loss, the in-batch
accuracy and the adapter after one step must all agree. Plain SGD without clipping keeps the
update proportional to the gradient: Adam's first step (``lr * sign(g)``) and gradient clipping
would hide a gradient that is off by a constant factor, such as a wrong world-size scale.
Selected by ``pytest -k "distributed or gather"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dist_utils import needs_gloo, run_torchrun, stray_files
from safetensors.torch import load_file

from cnclip_lora.commands.train import train_from_argv
from cnclip_lora.errors import ConfigError

PER_DEVICE = 4


def _flags(model: Path, data: Path, out: Path, batch_size: int) -> list[str]:
    return [
        "--model_name_or_path",
        str(model),
        "--data_dir",
        str(data),
        "--output_dir",
        str(out),
        "--val_size",
        "4",
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        str(batch_size),
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--optim",
        "sgd",
        "--learning_rate",
        "0.2",
        "--max_grad_norm",
        "0",
        "--lr_scheduler_type",
        "constant",
        "--warmup_steps",
        "0",
        "--flip",
        "none",
        "--dataloader_num_workers",
        "0",
        "--logging_steps",
        "1",
        "--use_cpu",
        "true",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--seed",
        "7",
    ]


@needs_gloo
@pytest.mark.parametrize("cache_images", ["false", "true"])
def test_distributed_train_torchrun_two_processes_equal_single_process(
    tiny_model_dir, make_dataset_dir, tmp_path, cache_images
):
    # 20 pairs, 4 held out: 16 training rows, so the first global batch of 8 is a real choice
    # among them (a wrong cut across processes would pick a different set of rows).
    data = make_dataset_dir(tmp_path, n_train_images=20, n_gallery=5, n_queries=4)
    out2 = tmp_path / "two"
    # With the pixel cache, rank 0 decodes (main_process_first) and rank 1 reads the same file.
    cache = ["--cache_images", cache_images, "--cache_dir", str(tmp_path / "pixels")]
    # No --use_cpu: a CPU-only torchrun launch trains across its processes (gloo) by itself, and says so.
    flags = [f for f in _flags(tiny_model_dir, data, out2, PER_DEVICE) if f not in ("--use_cpu", "true")]
    assert "--use_cpu" not in flags and flags.count("true") == 0
    log = run_torchrun(["-m", "cnclip_lora", "train", *flags, *cache], cwd=tmp_path)
    if not torch.cuda.is_available():
        # said once: under torchrun only rank 0 logs at info
        assert log.count("training across them on CPU with the gloo backend") == 1, log[-3000:]
    # Each rank destroyed the group it joined: no abort at exit, no leaked-group warning.
    assert "terminate called" not in log and "destroy_process_group" not in log
    out1 = tmp_path / "one"
    train_from_argv(_flags(tiny_model_dir, data, out1, 2 * PER_DEVICE) + ["--cache_images", "false"])
    cache_files = sorted(p.name for p in (tmp_path / "pixels").glob("*.arrow"))
    assert len(cache_files) == (1 if cache_images == "true" else 0), cache_files

    # Exactly one adapter, written once by rank 0: no second copy, no leftover partial file.
    assert [p.name for p in out2.rglob("*.safetensors")] == ["adapter_model.safetensors"]
    assert (out2 / "adapter_config.json").is_file()
    assert stray_files(out2) == []
    assert not list(out2.glob("checkpoint-*")) and not (out2 / "training_args.bin").exists()

    two, one = load_file(out2 / "adapter_model.safetensors"), load_file(out1 / "adapter_model.safetensors")
    assert sorted(two) == sorted(one)
    for name in one:
        assert (two[name] - one[name]).abs().max().item() < 1e-5, name
    # LoRA B starts at zero: after the step it must have moved, or the comparison above is vacuous.
    assert max(t.abs().max().item() for n, t in one.items() if "lora_B" in n) > 1e-3

    logs = [json.loads((d / "trainer_state.json").read_text())["log_history"][0] for d in (out2, out1)]
    assert logs[0]["loss"] == pytest.approx(logs[1]["loss"], abs=1e-5)
    assert logs[0]["grad_norm"] == pytest.approx(logs[1]["grad_norm"], rel=1e-4)
    # In-batch accuracy from summed [correct, total] counts over the global batch: identical.
    assert logs[0]["t2i_acc"] == logs[1]["t2i_acc"]
    assert logs[0]["epoch"] == logs[1]["epoch"] == 0.5  # 16 rows / global batch 8, one step

    # Final evaluation ran on both ranks (sharded embedding) and matches one process.
    evals = [json.loads((d / "eval_results.json").read_text()) for d in (out2, out1)]
    assert evals[0]["eval_gallery_size"] == evals[1]["eval_gallery_size"] == 9
    for key in ("eval_t2i_R@1", "eval_t2i_R@5", "eval_t2i_R@10", "eval_t2i_MR"):
        assert evals[0][key] == pytest.approx(evals[1][key]), key


@pytest.mark.parametrize("how", ["flag", "accelerate"])
def test_distributed_fsdp_is_refused_with_the_reason(how, monkeypatch, tmp_path):
    argv = [
        "--model_name_or_path",
        "unused",
        "--data_dir",
        str(tmp_path),
        "--output_dir",
        str(tmp_path / "o"),
        "--use_cpu",
        "true",
        "--report_to",
        "none",
    ]
    if how == "flag":
        argv += ["--fsdp", "full_shard"]
    else:  # `accelerate launch` with an FSDP config file
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match=r"FSDP and DeepSpeed are not supported: .*logit_scale"):
        train_from_argv(argv)
