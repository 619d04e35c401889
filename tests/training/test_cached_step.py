"""The cached-gradient contrastive step equals a plain step on the whole batch.

**What "the plain step" means with dropout on.** Dropout draws its masks from the global random
stream in the order and *shapes* of the forward calls. A plain step over ``B`` rows draws one
``[B, ...]`` mask per layer; the cached step draws ``[M, ...]`` masks chunk by chunk. Those are
different random numbers, so the two steps are not equal as random variables, only in
distribution. The well-defined comparison is against the plain step *with the same draws*: the
reference embeds the same chunks in the same order from the same seed, keeping the whole graph,
then takes the loss over all rows and one ordinary backward. That is autograd on the big batch,
with nothing cached; the cached step must reproduce it exactly, which it can only do if its
second pass replays every chunk's masks (drop the RNG restore and these tests fail). When
``M >= B`` there is one chunk and the reference *is* the literal plain step; the Trainer-level
test below checks that case against the Trainer's own ``training_step``.

float32 on CPU, compared to 1e-5: the loss, the LoRA gradients and the LoRA weights after AdamW.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from dist_utils import needs_gloo, run_torchrun
from safetensors.torch import load_file
from transformers import AutoProcessor, ChineseCLIPConfig, ChineseCLIPModel

from cnclip_lora.commands.train import train_from_argv
from cnclip_lora.config import CnClipTrainingArguments
from cnclip_lora.errors import ConfigError
from cnclip_lora.inputs.collate import ImageTextCollator
from cnclip_lora.modeling import apply_lora
from cnclip_lora.training.cached_step import cached_contrastive_step, model_embeddings
from cnclip_lora.training.loss import ContrastiveLoss

DROPOUT = 0.1
TOL = dict(atol=1e-5, rtol=1e-5)


def dropout_model(model_dir: Path, p: float = DROPOUT) -> torch.nn.Module:
    """The tiny model with dropout ``p`` in both towers and LoRA whose B matrices are not zero
    (peft initialises them to zero, which would leave every A gradient zero in a first step)."""
    config = ChineseCLIPConfig.from_pretrained(model_dir)
    config.text_config.hidden_dropout_prob = p
    config.text_config.attention_probs_dropout_prob = p
    config.vision_config.attention_dropout = p
    torch.manual_seed(0)
    model = apply_lora(ChineseCLIPModel.from_pretrained(model_dir, config=config), r=4, alpha=8)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return model.train()


def collated(model_dir: Path, data_dir: Path, rows: slice) -> dict[str, torch.Tensor]:
    import pandas as pd

    processor = AutoProcessor.from_pretrained(model_dir)
    records = pd.read_csv(data_dir / "train.csv", sep="\t").iloc[rows].to_dict("records")
    batch = ImageTextCollator(processor, data_dir / "image", flip="none")(records)
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def reference_step(model, batch, chunk_rows: int, seed: int):
    """Autograd on the whole batch, embedded chunk by chunk from ``seed`` (the same dropout draws)."""
    torch.manual_seed(seed)
    size = batch["input_ids"].shape[0]
    texts, images = [], []
    for start in range(0, size, chunk_rows):
        t, i = model_embeddings(model, {k: v[start : start + chunk_rows] for k, v in batch.items()})
        texts.append(t)
        images.append(i)
    out = ContrastiveLoss()(torch.cat(texts), torch.cat(images), model.logit_scale)
    out.loss.backward()
    return out


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


#: Adam's first step is about ``lr * sign(grad)``: with the default eps (1e-8) a gradient entry of
#: 1e-8 that float32 rounding (another summation order, DDP's averaging) moves by 1e-8 moves the
#: weight by ~lr. A larger eps keeps the update a smooth function of the gradient, so comparing
#: weights tests the gradients and the optimizer wiring rather than rounding.
ADAM_EPS = 1e-3


def adamw_step(model) -> None:
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, eps=ADAM_EPS).step()


def test_the_tiny_dropout_model_really_draws_masks(tiny_model_dir, demo_dir):
    model, batch = dropout_model(tiny_model_dir), collated(tiny_model_dir, demo_dir, slice(0, 4))
    with torch.no_grad():
        torch.manual_seed(1)
        a = model_embeddings(model, batch)[0]
        torch.manual_seed(2)
        b = model_embeddings(model, batch)[0]
    assert not torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("mini_batch", [3, 4, 10, 16])  # 3, 4 do not divide 10; 10 and 16 are one chunk
def test_cached_step_equals_the_big_batch_step_with_dropout(tiny_model_dir, demo_dir, mini_batch):
    batch = collated(tiny_model_dir, demo_dir, slice(0, 10))

    cached = dropout_model(tiny_model_dir)
    torch.manual_seed(7)
    out = cached_contrastive_step(cached, batch, ContrastiveLoss(), cached.logit_scale, mini_batch)
    after_cached = torch.get_rng_state()
    plain = dropout_model(tiny_model_dir)
    ref = reference_step(plain, batch, chunk_rows=mini_batch, seed=7)
    # The second pass replays randomness without consuming it: the stream continues as after one pass.
    assert torch.equal(after_cached, torch.get_rng_state())

    torch.testing.assert_close(out.loss, ref.loss.detach(), **TOL)
    assert int(out.t2i_correct) == int(ref.t2i_correct) and int(out.total) == 10
    grads, ref_grads = lora_grads(cached), lora_grads(plain)
    assert any("lora_A" in n and g.abs().max() > 0 for n, g in grads.items())
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], **TOL, msg=name)
    adamw_step(cached)
    adamw_step(plain)
    weights, ref_weights = lora_weights(cached), lora_weights(plain)
    for name in ref_weights:
        torch.testing.assert_close(weights[name], ref_weights[name], **TOL, msg=name)


def test_a_trainable_temperature_gets_the_plain_gradient(tiny_model_dir, demo_dir):
    batch = collated(tiny_model_dir, demo_dir, slice(0, 6))
    models = [dropout_model(tiny_model_dir, p=0.0) for _ in range(2)]
    for m in models:
        m.logit_scale.requires_grad_(True)
    cached_contrastive_step(models[0], batch, ContrastiveLoss(), models[0].logit_scale, 4)
    reference_step(models[1], batch, chunk_rows=6, seed=0)
    assert models[1].logit_scale.grad.abs() > 0
    torch.testing.assert_close(models[0].logit_scale.grad, models[1].logit_scale.grad, **TOL)


@pytest.mark.parametrize("bad", [0, -4, True, 2.5])
def test_mini_batch_size_must_be_a_positive_integer(bad, tmp_path):
    with pytest.raises(ConfigError, match="--contrastive_mini_batch_size must be a positive integer"):
        CnClipTrainingArguments(output_dir=str(tmp_path), contrastive_mini_batch_size=bad)


def test_a_bad_mini_batch_size_on_the_command_line_is_a_one_line_error(tiny_model_dir, demo_dir, tmp_path):
    import subprocess

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnclip_lora",
            "train",
            "--model_name_or_path",
            str(tiny_model_dir),
            "--data_dir",
            str(demo_dir),
            "--output_dir",
            str(tmp_path / "o"),
            "--contrastive_mini_batch_size",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "--contrastive_mini_batch_size must be a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ Trainer
def _run(model_dir: Path, data_dir: Path, out: Path, monkeypatch, **extra):
    """``train()`` for a few steps; returns (saved LoRA weights, log history, total_flos, the
    largest number of rows one forward pass saw)."""
    import importlib

    train_mod = importlib.import_module("cnclip_lora.training.run")
    trainers: list = []

    class Recording(train_mod.CnClipLoraTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)
            self.model.register_forward_pre_hook(
                lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
            )

    rows: list[int] = []
    monkeypatch.setattr(train_mod, "CnClipLoraTrainer", Recording)
    flags = {
        "model_name_or_path": model_dir,
        "data_dir": data_dir,
        "output_dir": out,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "lora_r": 4,
        "lora_alpha": 8,
        "val_size": 8,
        "use_cpu": True,
        "seed": 0,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "max_steps": 2,
        "flip": "none",
        "adam_epsilon": ADAM_EPS,
    }
    flags.update(extra)
    argv = [x for k, v in flags.items() for x in (f"--{k}", str(v))]
    result = train_from_argv(argv)
    weights = load_file(str(result.output_dir / "adapter_model.safetensors"))
    state = trainers[0].state
    logs = [h for h in state.log_history if "loss" in h]
    return weights, logs, state.total_flos, max(rows)


def _assert_same_runs(a, b) -> None:
    weights, logs, flos, _ = a
    ref_weights, ref_logs, ref_flos, _ = b
    assert weights.keys() == ref_weights.keys()
    for name in ref_weights:
        torch.testing.assert_close(weights[name], ref_weights[name], **TOL, msg=name)
    assert len(logs) == len(ref_logs) == 2
    for log, ref in zip(logs, ref_logs):
        assert log["loss"] == pytest.approx(ref["loss"], abs=1e-4)
        assert log["t2i_acc"] == ref["t2i_acc"]
    assert flos == ref_flos > 0  # model FLOPs of B rows: the extra no-grad pass is recomputation


def test_trainer_cached_step_with_accumulation_and_checkpointing_equals_the_plain_step(
    tiny_model_dir, demo_dir, tmp_path, monkeypatch
):
    """Dropout off (the tiny model's own config), so any chunking is comparable with the Trainer's
    plain step; 2 accumulation steps, activation checkpointing, M=3 not dividing B=8."""
    common = dict(gradient_accumulation_steps=2, activation_checkpointing=True, unique_images_per_batch=True)
    plain = _run(tiny_model_dir, demo_dir, tmp_path / "plain", monkeypatch, **common)
    cached = _run(tiny_model_dir, demo_dir, tmp_path / "cached", monkeypatch, contrastive_mini_batch_size=3, **common)
    assert (plain[-1], cached[-1]) == (8, 3)  # activations of at most M rows at a time
    _assert_same_runs(cached, plain)


def test_trainer_cached_step_replays_dropout_like_the_plain_step(tiny_model_dir, demo_dir, tmp_path, monkeypatch):
    """Dropout on, one chunk (M=B): the same draws as the Trainer's plain step, so equal updates
    only if the second pass replays the first pass's masks."""
    model_dir = tmp_path / "dropout-model"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["text_config"].update(hidden_dropout_prob=DROPOUT, attention_probs_dropout_prob=DROPOUT)
    config["vision_config"]["attention_dropout"] = DROPOUT
    (model_dir / "config.json").write_text(json.dumps(config))
    plain = _run(model_dir, demo_dir, tmp_path / "plain", monkeypatch)
    cached = _run(model_dir, demo_dir, tmp_path / "cached", monkeypatch, contrastive_mini_batch_size=8)
    _assert_same_runs(cached, plain)


# -------------------------------------------------------------------------------- distributed
DIST_SCRIPT = textwrap.dedent(
    '''
    """Each rank: LOCAL_B rows, cached step with M=3 under DDP; rank 0 writes the results."""
    import gc, json, sys
    from pathlib import Path
    import torch
    from cnclip_lora.training.cached_step import cached_contrastive_step
    from cnclip_lora.training.loss import ContrastiveLoss
    # this test module's folder, and the tests folder above it (shared helpers such as dist_utils)
    sys.path[:0] = [sys.argv[4], str(Path(sys.argv[4]).parent)]
    from test_cached_step import adamw_step, collated, dropout_model, lora_grads, lora_weights

    LOCAL_B, M, SEED = 5, 3, 11

    def counting_allreduce(state, bucket):
        state.append(1)
        fut = torch.distributed.all_reduce(bucket.buffer(), async_op=True).get_future()
        world = torch.distributed.get_world_size()
        return fut.then(lambda f: f.value()[0] / world)

    def ddp(model):
        net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
        calls = []
        net.register_comm_hook(calls, counting_allreduce)
        return net, calls

    def main(model_dir, data_dir, out):
        # In a function: the DDP wrappers (and their reducers' threads) are gone when it returns,
        # before the group is destroyed; none is alive at interpreter exit.
        rank = torch.distributed.get_rank()
        batch = collated(model_dir, data_dir, slice(rank * LOCAL_B, (rank + 1) * LOCAL_B))

        # How many all-reduces one plain synchronised backward makes (one per gradient bucket).
        model = dropout_model(model_dir)
        net, plain_calls = ddp(model)
        o = net(**batch)
        ContrastiveLoss()(o.text_embeds, o.image_embeds, model.logit_scale).loss.backward()

        model = dropout_model(model_dir)
        net, calls = ddp(model)
        torch.manual_seed(SEED)
        res = cached_contrastive_step(net, batch, ContrastiveLoss(), model.logit_scale, M, no_sync=net.no_sync)
        grads = lora_grads(model)
        adamw_step(model)
        loss = res.loss.clone()
        torch.distributed.all_reduce(loss)
        if rank == 0:
            torch.save({"loss": loss / torch.distributed.get_world_size(), "grads": grads,
                        "weights": lora_weights(model), "calls": len(calls), "plain_calls": len(plain_calls)},
                       out)


    if __name__ == "__main__":
        torch.distributed.init_process_group("gloo")
        try:
            main(*map(Path, sys.argv[1:4]))
        finally:
            gc.collect()
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
    '''
)


@needs_gloo
def test_two_processes_with_cached_steps_equal_one_process_with_the_whole_batch(tiny_model_dir, demo_dir, tmp_path):
    """Each of 2 ranks: B=5, M=3, dropout on, both seeded alike. The reference embeds rank 0's
    chunks then rank 1's, each from that seed (the draws the ranks made), keeps the graph over
    all 10 rows and takes one ordinary backward; gradients are all-reduced once per step."""
    script = tmp_path / "dist_cached.py"
    script.write_text(DIST_SCRIPT)
    out = tmp_path / "rank0.pt"
    repo = Path(__file__).resolve().parents[2]
    run_torchrun([script, tiny_model_dir, demo_dir, out, Path(__file__).resolve().parent], cwd=repo)
    got = torch.load(out, weights_only=True)

    model = dropout_model(tiny_model_dir)
    texts, images = [], []
    for rank in range(2):
        batch = collated(tiny_model_dir, demo_dir, slice(rank * 5, (rank + 1) * 5))
        torch.manual_seed(11)
        for start in range(0, 5, 3):
            t, i = model_embeddings(model, {k: v[start : start + 3] for k, v in batch.items()})
            texts.append(t)
            images.append(i)
    ref = ContrastiveLoss()(torch.cat(texts), torch.cat(images), model.logit_scale)
    ref.loss.backward()
    torch.testing.assert_close(got["loss"], ref.loss.detach(), **TOL)
    for name, grad in lora_grads(model).items():
        torch.testing.assert_close(got["grads"][name], grad, **TOL, msg=name)
    adamw_step(model)
    for name, weight in lora_weights(model).items():
        torch.testing.assert_close(got["weights"][name], weight, **TOL, msg=name)
    assert got["plain_calls"] >= 1
    assert got["calls"] == got["plain_calls"]  # two chunks, yet one synchronised backward


def test_trainer_cached_step_under_regional_torch_compile_equals_the_eager_plain_step(
    tiny_model_dir, demo_dir, tmp_path, monkeypatch
):
    """``--torch_compile true`` (regional: accelerate's compile_regions) with the cached step: the two
    passes per chunk run through the compiled layers and the update is still the plain step's.
    ``aot_eager`` traces and partitions the graphs like inductor without needing a C++ toolchain."""
    monkeypatch.delenv("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", raising=False)
    from torch._dynamo.utils import counters

    plain = _run(tiny_model_dir, demo_dir, tmp_path / "plain", monkeypatch)
    counters.clear()
    compiled = _run(
        tiny_model_dir,
        demo_dir,
        tmp_path / "compiled",
        monkeypatch,
        contrastive_mini_batch_size=3,
        torch_compile=True,
        torch_compile_backend="aot_eager",
    )
    assert counters["stats"]["unique_graphs"] > 0  # the step really ran compiled graphs
    assert compiled[-1] == 3
    _assert_same_runs(compiled, plain)
