"""``cnclip-lora demo`` / ``make demo``: the whole job on the embedded default, in a few minutes on CPU.

Tiny Chinese-CLIP built offline + the committed synthetic ``xfdata/`` -> zero-shot scores ->
LoRA fine-tuning -> fine-tuned scores -> ``prediction_result/submit.csv``. The numbers show the
pipeline learns; they say nothing about real checkpoints (see README for the real-model recipe).
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["DEMO_MODEL", "DEMO_TRAIN_FLAGS", "ensure_demo_model", "run_demo"]

#: The demo's tiny model: 4 layers per tower learn the synthetic shop data clearly in the budget
#: below, where 2 (the test suite's size) barely move. Tests keep the smaller default.
DEMO_MODEL = {"num_layers": 4}

#: The demo's training budget (about a minute on 2 CPU cores). A higher learning rate than the
#: seed's 4e-5 because the tiny model starts from random weights, not from a pretrained checkpoint;
#: weight decay because 540 pairs over 30 epochs otherwise start to be memorised.
DEMO_TRAIN_FLAGS = {
    "num_train_epochs": 30,
    "per_device_train_batch_size": 32,
    "learning_rate": 2e-3,
    "weight_decay": 0.1,
    "warmup_steps": 10,
    "lora_r": 32,
    "lora_alpha": 64,
    # No flip: with a flip at training only (the augmentation), the tiny model learns less in this budget.
    "flip": "none",
    "logging_steps": 20,
    "save_strategy": "no",
    "eval_strategy": "no",
    "dataloader_num_workers": 1,
    "seed": 0,
    "use_cpu": True,
}


def ensure_demo_model(model_dir: str | Path) -> Path:
    """The demo's tiny model in ``model_dir``, built (seed 0, :data:`DEMO_MODEL`) when the folder has none.

    The demo and the benchmarks that measure the demo recipe share it, so they train the same model.
    """
    from cnclip_lora.demo.tiny_model import make_tiny_model

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        print(f"[demo] building the tiny Chinese-CLIP model in {model_dir}")
        make_tiny_model(model_dir, seed=0, **DEMO_MODEL)
    return model_dir


def _scores(**kwargs) -> dict[str, float]:
    from cnclip_lora.retrieve.run import EvaluateArguments, evaluate_retrieval

    return evaluate_retrieval(EvaluateArguments(**kwargs))


def run_demo(
    data_dir: str | Path = "xfdata",
    workdir: str | Path = "demo_output",
    output: str = "prediction_result/submit.csv",
    num_train_epochs: float | None = None,
    max_steps: int | None = None,
) -> dict[str, dict[str, float]]:
    """Run the demo; returns ``{"base": metrics, "tuned": metrics}`` and prints a table.

    ``data_dir`` is written with the synthetic sample when it has no train.csv; ``workdir`` holds
    the tiny model, the adapter and the caches; ``num_train_epochs`` / ``max_steps`` replace the
    demo's training budget.
    """
    from cnclip_lora.demo.data import make_demo_data
    from cnclip_lora.retrieve.run import RetrieveArguments, retrieve
    from cnclip_lora.training.run import train

    start = time.time()
    data_dir = Path(data_dir)
    workdir = Path(workdir)
    from cnclip_lora.data import load_competition_data
    from cnclip_lora.data.cnclip_layout import is_cnclip_layout
    from cnclip_lora.data.hf_source import is_datasets_folder

    if not (data_dir / "train.csv").is_file() and not is_cnclip_layout(data_dir) and not is_datasets_folder(data_dir):
        print(f"[demo] {data_dir} holds no dataset: writing the synthetic sample there")
        make_demo_data(data_dir)
    model_dir = ensure_demo_model(workdir / "tiny-model")
    adapter_dir = workdir / "adapter"
    cache = str(workdir / "cache")
    # Any layout: the test queries are scored when the data has their answers.
    has_answers = load_competition_data(data_dir, skip_bad_rows=True, check_images=False).answers is not None

    common = dict(model_name_or_path=str(model_dir), data_dir=str(data_dir), cache_dir=cache, device="cpu")
    print("[demo] scoring the untrained model (zero-shot baseline)")
    base = _scores(split="val", **common)
    if has_answers:
        base.update(_scores(split="test", **common))

    flags = dict(DEMO_TRAIN_FLAGS)
    flags["overwrite_output_dir"] = True  # the demo's own folder: a rerun replaces the previous demo run
    if num_train_epochs is not None:
        flags["num_train_epochs"] = num_train_epochs
    if max_steps is not None:
        flags["max_steps"] = max_steps
    print(f"[demo] fine-tuning LoRA adapters -> {adapter_dir}")
    train_start = time.time()
    train(model_name_or_path=str(model_dir), data_dir=str(data_dir), output_dir=str(adapter_dir), **flags)
    train_time = time.time() - train_start

    tuned_args = dict(common, adapter=str(adapter_dir))
    tuned = _scores(split="val", **tuned_args)
    if has_answers:
        tuned.update(_scores(split="test", **tuned_args))
    result = retrieve(
        RetrieveArguments(output=output, topk_output=str(Path(output).with_name("topk.csv")), top_k=10, **tuned_args)
    )

    report_path = _write_report(model_dir, data_dir, adapter_dir, cache, workdir / "report.html")

    _print_table(base, tuned)
    print(f"\nreport: {report_path} (base vs fine-tuned, open it in a browser)")
    gallery = result.metrics["gallery_size"]
    print(f"\nsubmission: {output} ({len(result.assignment)} queries, gallery {gallery} images)")
    print(f"time: {time.time() - start:.0f} s in all, {train_time:.0f} s training (CPU)")
    return {"base": base, "tuned": tuned}


def _write_report(model_dir: Path, data_dir: Path, adapter_dir: Path, cache: str, output: Path) -> Path:
    """The HTML report of the held-out split and the test queries, base vs fine-tuned (embeddings from the cache)."""
    from cnclip_lora.retrieve.report import ReportArguments, build_report

    return build_report(
        ReportArguments(
            model_name_or_path=str(model_dir),
            data_dir=str(data_dir),
            adapter=str(adapter_dir),
            compare_base=True,
            output=str(output),
            cache_dir=cache,
            device="cpu",
        )
    )


def _print_table(base: dict[str, float], tuned: dict[str, float]) -> None:
    """The README's table: one row per split, text-to-image MR and R@10 before and after."""
    print("\n| split | gallery | base MR | fine-tuned MR | base R@10 | fine-tuned R@10 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for split, label in (("val", "held-out (val)"), ("test", "test queries")):
        if f"{split}_t2i_MR" not in base:
            continue
        mr, r10 = f"{split}_t2i_MR", f"{split}_t2i_R@10"
        print(
            f"| {label} | {base[f'{split}_gallery_size']} | {base[mr]:.1f} | {tuned[mr]:.1f} | "
            f"{base[r10]:.1f} | {tuned[r10]:.1f} |"
        )
