"""CnClipLoraTrainer end to end on the tiny model: loss, what is saved, reload, resume, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoProcessor, ChineseCLIPModel

from cnclip_lora.commands.train import train_from_argv
from cnclip_lora.inputs.collate import ImageTextCollator
from cnclip_lora.modeling import apply_lora, get_image_embeds, get_text_embeds
from cnclip_lora.training.loss import ContrastiveLoss

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle"}


def _flags(model_dir: Path, data_dir: Path, out: Path, **extra) -> list[str]:
    flags = {
        "model_name_or_path": model_dir,
        "data_dir": data_dir,
        "output_dir": out,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "learning_rate": 1e-3,
        "lora_r": 8,
        "lora_alpha": 16,
        "val_size": 8,
        "use_cpu": True,
        "seed": 0,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "dataloader_num_workers": 0,
    }
    flags.update(extra)
    argv: list[str] = []
    for key, value in flags.items():
        argv += [f"--{key}", str(value)]
    return argv


@pytest.fixture(scope="module")
def trained(tiny_model_dir, demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "adapter"
    result = train_from_argv(_flags(tiny_model_dir, demo_dir, out, max_steps=4))
    return result


def test_loss_equals_chinese_clip_return_loss(tiny_model_dir, demo_dir):
    import pandas as pd

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = ChineseCLIPModel.from_pretrained(tiny_model_dir).eval()
    rows = pd.read_csv(demo_dir / "train.csv", sep="\t").head(6).to_dict("records")
    batch = ImageTextCollator(processor, demo_dir / "image", flip="none")(rows)
    with torch.no_grad():
        out = model(**batch, return_loss=True)
        ours = ContrastiveLoss()(out.text_embeds, out.image_embeds, model.logit_scale)
    assert torch.allclose(ours.loss, out.loss, atol=1e-6)


def test_one_step_changes_lora_and_not_base_weights(tiny_model_dir, demo_dir):
    import pandas as pd

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = apply_lora(ChineseCLIPModel.from_pretrained(tiny_model_dir), r=4, alpha=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = pd.read_csv(demo_dir / "train.csv", sep="\t").head(8).to_dict("records")
    batch = ImageTextCollator(processor, demo_dir / "image", flip="always")(rows)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(**batch)
    ContrastiveLoss()(out.text_embeds, out.image_embeds, model.logit_scale).loss.backward()
    optim.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "nothing changed"
    assert all("lora_" in n for n in changed), sorted(changed)[:5]
    assert any("vision_model" in n for n in changed) and any("text_model" in n for n in changed)


def test_output_holds_only_adapter_processor_and_record(trained):
    out = trained.output_dir
    names = {p.name for p in out.iterdir() if p.is_file()}
    assert {"adapter_model.safetensors", "adapter_config.json", "cnclip_lora.json", "training_args.json"} <= names
    assert names & {"processor_config.json", "preprocessor_config.json"}, names
    assert not any(Path(n).suffix in PICKLE_SUFFIXES for n in names), names
    assert "model.safetensors" not in names
    record = json.loads((out / "cnclip_lora.json").read_text())
    # the default flip: random in training, so no flip at retrieval
    assert record["preprocessing"]["train_flip"] == "random"
    assert record["preprocessing"]["inference_flip"] is False
    assert record["data"]["n_train"] > 0 and record["data"]["val_gallery_size"] > record["data"]["n_val"]
    # only LoRA tensors in the adapter file, and from both towers
    from safetensors import safe_open

    with safe_open(out / "adapter_model.safetensors", "pt") as fh:
        keys = list(fh.keys())
    assert keys and all("lora_" in k for k in keys)
    assert any("vision_model" in k for k in keys) and any("text_model" in k for k in keys)


def test_final_metrics_are_saved_and_include_gallery_size(trained):
    results = json.loads((trained.output_dir / "all_results.json").read_text())
    for key in ("train_loss", "eval_t2i_R@1", "eval_t2i_R@5", "eval_t2i_R@10", "eval_t2i_MR", "eval_gallery_size"):
        assert key in results, key
    assert results["eval_gallery_size"] > 8
    assert 0 <= results["eval_t2i_MR"] <= 100
    # merged into the standard Trainer.evaluate result: timed like any evaluation, both directions
    assert results["eval_runtime"] > 0 and "eval_samples_per_second" in results
    assert 0 <= results["eval_i2t_MR"] <= 100


def test_trainer_evaluation_equals_cnclip_lora_evaluate(trained, tiny_model_dir, demo_dir):
    """The end-of-training metrics and `cnclip-lora evaluate --split val` on the saved adapter are
    the same evaluator on the same split: equal numbers."""
    from cnclip_lora.retrieve.run import EvaluateArguments, evaluate_retrieval

    cli = evaluate_retrieval(
        EvaluateArguments(
            model_name_or_path=str(tiny_model_dir),
            adapter=str(trained.output_dir),
            data_dir=str(demo_dir),
            device="cpu",
            cache_dir="",
        )
    )
    keys = [f"{d}_{m}" for d in ("t2i", "i2t") for m in ("R@1", "R@5", "R@10", "MR")] + ["gallery_size", "queries"]
    assert {k: trained.eval_metrics[f"eval_{k}"] for k in keys} == pytest.approx({k: cli[f"val_{k}"] for k in keys})


def _direct_trainer(tiny_model_dir, demo_dir, out, evaluator_queries=8, callbacks=None, **arg_overrides):
    """A CnClipLoraTrainer built by hand with only an evaluator to evaluate with (no eval_dataset)."""
    import datasets
    import pandas as pd

    from cnclip_lora.adapter.record import Preprocessing
    from cnclip_lora.config import CnClipTrainingArguments
    from cnclip_lora.inference.evaluator import RetrievalEvaluator
    from cnclip_lora.training.trainer import CnClipLoraTrainer

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = apply_lora(ChineseCLIPModel.from_pretrained(tiny_model_dir), r=4, alpha=8)
    frame = pd.read_csv(demo_dir / "train.csv", sep="\t")
    held = frame.tail(evaluator_queries)
    gallery = sorted({str(demo_dir / "image" / p) for p in held["path"]})
    labels = [gallery.index(str(demo_dir / "image" / p)) for p in held["path"]]
    evaluator = RetrievalEvaluator(list(held["title"]), labels, gallery, processor, Preprocessing())
    args = CnClipTrainingArguments(
        **{
            "output_dir": str(out),
            "use_cpu": True,
            "report_to": "none",
            "per_device_train_batch_size": 8,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "dataloader_num_workers": 0,
            "seed": 0,
            **arg_overrides,
        }
    )
    return CnClipLoraTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_pandas(frame.head(32)),
        data_collator=ImageTextCollator(processor, demo_dir / "image"),
        processing_class=processor,
        evaluator=evaluator,
        callbacks=callbacks,
    )


def test_early_stopping_and_best_model_work_with_only_an_evaluator(tiny_model_dir, demo_dir, tmp_path):
    from transformers import EarlyStoppingCallback

    stop = EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=1000.0)  # no gain is enough
    trainer = _direct_trainer(
        tiny_model_dir,
        demo_dir,
        tmp_path / "es",
        callbacks=[stop],
        max_steps=8,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        metric_for_best_model="eval_t2i_MR",
        load_best_model_at_end=True,
    )
    assert trainer.eval_dataset is None
    trainer.train()
    assert trainer.state.global_step == 2  # first evaluation sets the best, the second runs out of patience
    evals = [e for e in trainer.state.log_history if "eval_t2i_MR" in e]
    assert [e["step"] for e in evals] == [1, 2]
    assert all(e["eval_runtime"] > 0 and "eval_i2t_R@1" in e for e in evals)
    assert trainer.state.best_metric == evals[0]["eval_t2i_MR"]
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-1")


def test_an_eval_dataset_is_evaluated_by_the_trainer_with_the_evaluator_merged(tiny_model_dir, demo_dir, tmp_path):
    import datasets
    import pandas as pd

    trainer = _direct_trainer(tiny_model_dir, demo_dir, tmp_path / "ds", max_steps=1, per_device_eval_batch_size=8)
    pairs = datasets.Dataset.from_pandas(pd.read_csv(demo_dir / "train.csv", sep="\t").tail(16))
    metrics = trainer.evaluate(eval_dataset=pairs)
    assert metrics["eval_samples_per_second"] > 0 and metrics["eval_runtime"] > 0
    assert metrics["eval_t2i_MR"] == trainer.evaluate()["eval_t2i_MR"]  # same model, same evaluator


def test_saved_adapter_reloads_with_plain_peft_and_gives_the_same_embeddings(trained, tiny_model_dir, demo_dir):
    from cnclip_lora.inputs.images import preprocess_images
    from cnclip_lora.inputs.text import tokenize_titles

    processor = AutoProcessor.from_pretrained(trained.output_dir)
    base = ChineseCLIPModel.from_pretrained(tiny_model_dir)
    reloaded = PeftModel.from_pretrained(base, trained.output_dir).eval()
    plain = ChineseCLIPModel.from_pretrained(tiny_model_dir).eval()
    enc = tokenize_titles(["红色条纹连衣裙", "蓝色T恤"], processor.tokenizer, 52)
    images = sorted((demo_dir / "image").iterdir())[:2]
    pixels = preprocess_images(images, processor.image_processor, flips=True)
    with torch.no_grad():
        t = get_text_embeds(reloaded, **enc)
        i = get_image_embeds(reloaded, pixels)
        t0 = get_text_embeds(plain, **enc)
    assert not torch.allclose(t, t0, atol=1e-4), "adapter had no effect: training did not change it"
    # merged copy equals the unmerged adapter
    merged = (
        PeftModel.from_pretrained(ChineseCLIPModel.from_pretrained(tiny_model_dir), trained.output_dir)
        .merge_and_unload()
        .eval()
    )
    with torch.no_grad():
        assert torch.allclose(get_text_embeds(merged, **enc), t, atol=1e-5)
        assert torch.allclose(get_image_embeds(merged, pixels), i, atol=1e-5)


def test_resume_from_checkpoint_continues_the_step_count(tiny_model_dir, demo_dir, tmp_path):
    out = tmp_path / "run"
    train_from_argv(
        _flags(tiny_model_dir, demo_dir, out, max_steps=2, save_strategy="steps", save_steps=2, val_size=0)
    )
    ckpt = out / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").is_file()
    assert not (ckpt / "model.safetensors").exists()
    result = train_from_argv(
        _flags(
            tiny_model_dir,
            demo_dir,
            out,
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
            val_size=0,
            resume_from_checkpoint=ckpt,
        )
    )
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == [1, 2, 3, 4]
    assert result.train_metrics["train_loss"] > 0


def test_best_model_selection_uses_retrieval_metric(tiny_model_dir, demo_dir, tmp_path):
    out = tmp_path / "best"
    train_from_argv(
        _flags(
            tiny_model_dir,
            demo_dir,
            out,
            max_steps=4,
            eval_strategy="steps",
            eval_steps=2,
            save_strategy="steps",
            save_steps=2,
            load_best_model_at_end="true",
            metric_for_best_model="eval_t2i_MR",
            greater_is_better="true",
        )
    )
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_t2i_MR" in e]
    assert len(evals) >= 2
    assert state["best_metric"] == pytest.approx(max(e["eval_t2i_MR"] for e in evals[:2]))
    assert state["best_model_checkpoint"].endswith(("checkpoint-2", "checkpoint-4"))


def _capture_trainers(monkeypatch) -> list:
    """Make ``train()`` build a recording subclass of ``CnClipLoraTrainer``; returns its instances."""
    import importlib

    train_mod = importlib.import_module(
        "cnclip_lora.training.run"
    )  # the module (the package exports a function of that name)
    trainers: list = []

    class Recording(train_mod.CnClipLoraTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    monkeypatch.setattr(train_mod, "CnClipLoraTrainer", Recording)
    return trainers


def _adapter_dtypes(path: Path) -> dict[str, torch.dtype]:
    from safetensors import safe_open

    with safe_open(str(path / "adapter_model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k).dtype for k in f.keys()}


def test_torch_compile_is_regional_and_saves_the_same_adapter(
    tiny_model_dir, demo_dir, tmp_path, trained, monkeypatch
):
    """--torch_compile compiles each tower's layer (accelerate's regional compilation) and the
    saved adapter has exactly the uncompiled run's tensor names (no ``_orig_mod`` prefixes)."""
    import os

    from accelerate.utils import has_compiled_regions

    monkeypatch.delenv("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", raising=False)
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    trainers = _capture_trainers(monkeypatch)
    try:
        result = train_from_argv(
            _flags(tiny_model_dir, demo_dir, tmp_path / "compiled", max_steps=2, torch_compile=True)
        )
    finally:
        torch._dynamo.reset()

    wrapped = trainers[0].model_wrapped
    assert os.environ.get("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION") == "true"
    assert has_compiled_regions(wrapped)
    assert not isinstance(wrapped, torch._dynamo.eval_frame.OptimizedModule)  # regions, not the whole model
    assert set(_adapter_dtypes(result.output_dir)) == set(_adapter_dtypes(trained.output_dir))
    assert result.train_metrics["train_loss"] > 0


def test_bf16_stores_frozen_weights_in_bf16_and_trains_float32_adapters(
    tiny_model_dir, demo_dir, tmp_path, monkeypatch
):
    import math

    trainers = _capture_trainers(monkeypatch)
    result = train_from_argv(_flags(tiny_model_dir, demo_dir, tmp_path / "bf16", max_steps=2, bf16=True))
    dtypes: dict[str, set] = {"base": set(), "lora": set()}
    for name, param in trainers[0].model.named_parameters():
        dtypes["lora" if "lora_" in name else "base"].add(param.dtype)
    assert dtypes == {"base": {torch.bfloat16}, "lora": {torch.float32}}
    assert set(_adapter_dtypes(result.output_dir).values()) == {torch.float32}
    assert math.isfinite(result.train_metrics["train_loss"])


def _trainer_after_one_backward(model_dir: Path, data_dir: Path, out: Path, **args):
    """A CnClipLoraTrainer over a LoRA model whose gradients hold one batch's backward pass."""
    import pandas as pd

    from cnclip_lora.config import CnClipTrainingArguments
    from cnclip_lora.training.trainer import CnClipLoraTrainer

    processor = AutoProcessor.from_pretrained(model_dir)
    model = apply_lora(ChineseCLIPModel.from_pretrained(model_dir), r=4, alpha=8)
    trainer = CnClipLoraTrainer(
        model=model, args=CnClipTrainingArguments(output_dir=str(out), use_cpu=True, report_to="none", **args)
    )
    rows = pd.read_csv(data_dir / "train.csv", sep="\t").head(8).to_dict("records")
    batch = ImageTextCollator(processor, data_dir / "image", flip="always")(rows)
    out_ = model(**batch)
    ContrastiveLoss()(out_.text_embeds, out_.image_embeds, model.logit_scale).loss.backward()
    return trainer, model


def _walks_of(model: torch.nn.Module, fn) -> int:
    """How many times ``fn()`` iterates ``model.parameters()``."""
    walks = []
    real_parameters = type(model).parameters
    type(model).parameters = lambda self, *a, **k: walks.append(1) or real_parameters(self, *a, **k)
    try:
        fn()
    finally:
        type(model).parameters = real_parameters
    return len(walks)


def test_grad_clipping_covers_exactly_the_lora_parameters(tiny_model_dir, demo_dir, tmp_path):
    """The clip sees the same gradients (same norm, same clipped values) as the Trainer's default,
    without walking the frozen weights after the first step."""
    from transformers import Trainer

    trainer, model = _trainer_after_one_backward(tiny_model_dir, demo_dir, tmp_path, max_grad_norm=1e-3)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected_norm = Trainer._clip_grad_norm(trainer, model)
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if n in grads:
            p.grad = grads[n].clone()
    norm = trainer._clip_grad_norm(model)
    assert float(expected_norm) > 1e-3  # the clip really scaled the gradients
    torch.testing.assert_close(norm, expected_norm)
    for n, p in model.named_parameters():
        if n in expected:
            torch.testing.assert_close(p.grad, expected[n])
    assert _walks_of(model, lambda: trainer._clip_grad_norm(model)) == 0


def test_unclipped_grad_norm_for_the_logs_is_the_trainers_without_the_walk(tiny_model_dir, demo_dir, tmp_path):
    from transformers import Trainer

    trainer, model = _trainer_after_one_backward(tiny_model_dir, demo_dir, tmp_path, max_grad_norm=0.0)
    expected = Trainer._get_grad_norm(trainer, model)
    torch.testing.assert_close(trainer._get_grad_norm(model), expected)
    assert float(expected) > 0
    assert _walks_of(model, lambda: trainer._get_grad_norm(model)) == 0


def test_a_diverged_step_shows_in_the_logs_with_a_warning(tiny_model_dir, demo_dir, tmp_path, monkeypatch, caplog):
    """transformers' default NaN filter would log the running average instead (and read the loss
    back from the device every step); a NaN step must be visible."""
    import importlib
    import logging
    import math

    train_mod = importlib.import_module("cnclip_lora.training.run")
    trainers: list = []

    class Diverging(train_mod.CnClipLoraTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return loss * float("nan") if self.state.global_step == 1 else loss

    monkeypatch.setattr(train_mod, "CnClipLoraTrainer", Diverging)
    with caplog.at_level(logging.WARNING, logger="cnclip_lora.training.trainer"):
        train_from_argv(_flags(tiny_model_dir, demo_dir, tmp_path / "out", max_steps=3, val_size=0))
    losses = [entry["loss"] for entry in trainers[0].state.log_history if "loss" in entry]
    assert len(losses) == 3 and math.isfinite(losses[0]) and math.isnan(losses[1])
    assert "training loss is nan at step 2" in caplog.text


def test_evaluating_a_diverged_model_names_the_divergence(tiny_model_dir, demo_dir, tmp_path, monkeypatch):
    import importlib

    from cnclip_lora.errors import CnClipLoraError

    train_mod = importlib.import_module("cnclip_lora.training.run")

    class Diverging(train_mod.CnClipLoraTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch) * float("nan")

    monkeypatch.setattr(train_mod, "CnClipLoraTrainer", Diverging)
    with pytest.raises(CnClipLoraError, match="evaluation at step 2: .* training has diverged"):
        train_from_argv(_flags(tiny_model_dir, demo_dir, tmp_path / "out", max_steps=2))


def test_a_model_reused_by_a_second_trainer_runs_that_trainers_precision(tiny_model_dir, demo_dir, tmp_path):
    """accelerate leaves its bf16 autocast wrapper and a "prepared" mark on the model object; a
    second Trainer on it (a notebook re-run) must not silently train in the first run's bf16."""
    import datasets
    import pandas as pd

    from cnclip_lora.config import CnClipTrainingArguments
    from cnclip_lora.training.trainer import CnClipLoraTrainer

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = apply_lora(ChineseCLIPModel.from_pretrained(tiny_model_dir), r=4, alpha=8)
    dataset = datasets.Dataset.from_pandas(pd.read_csv(demo_dir / "train.csv", sep="\t").head(16))
    q_proj = next(m for n, m in model.named_modules() if n.endswith("vision_model.encoder.layers.0.self_attn.q_proj"))
    seen: list[torch.dtype] = []
    q_proj.register_forward_hook(lambda module, args, output: seen.append(output.dtype))

    def run(bf16: bool) -> set[torch.dtype]:
        seen.clear()
        args = CnClipTrainingArguments(
            output_dir=str(tmp_path / str(bf16)),
            use_cpu=True,
            report_to="none",
            bf16=bf16,
            max_steps=1,
            per_device_train_batch_size=8,
            save_strategy="no",
            dataloader_num_workers=0,
        )
        CnClipLoraTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=processor,
            data_collator=ImageTextCollator(processor, demo_dir / "image"),
        ).train()
        return set(seen)

    assert run(bf16=True) == {torch.bfloat16}
    assert run(bf16=False) == {torch.float32}
    assert run(bf16=True) == {torch.bfloat16}
