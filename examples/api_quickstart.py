"""The Python API end to end, as you would run it from a notebook (CPU, about a minute).

    python examples/api_quickstart.py

Builds the tiny offline model, fine-tunes LoRA on the committed sample, scores base vs tuned on
the held-out split, then ranks the gallery for a few free-text queries.
"""

from pathlib import Path

from cnclip_lora import EvaluateArguments, RetrievalModel, apply_lora, evaluate_retrieval, rank, train
from cnclip_lora.demo.tiny_model import make_tiny_model
from cnclip_lora.modeling import load_model_and_processor

work = Path("demo_output/api-example")
model_dir = make_tiny_model(work / "tiny-model", seed=0)

# 1. Adapters are verified on both towers; a misspelled target raises before any training.
model, processor = load_model_and_processor(str(model_dir))
apply_lora(model, r=8, alpha=16).print_trainable_parameters()

# 2. Train: every `cnclip-lora train` option as a keyword argument (a misspelt one names the closest).
result = train(
    model_name_or_path=str(model_dir),
    data_dir="xfdata",
    output_dir=str(work / "adapter"),
    num_train_epochs=12,
    per_device_train_batch_size=32,
    learning_rate=2e-3,
    lora_r=32,
    lora_alpha=64,
    use_cpu=True,
    save_strategy="no",
    report_to="none",
)
print("held-out metrics after training:", result.eval_metrics)

# 3. Evaluate base vs tuned with the competition's gallery protocol.
for adapter in (None, str(work / "adapter")):
    metrics = evaluate_retrieval(
        EvaluateArguments(
            model_name_or_path=str(model_dir),
            adapter=adapter,
            data_dir="xfdata",
            split="val",
            cache_dir=str(work / "cache"),
            device="cpu",
        )
    )
    print("adapter" if adapter else "base   ", {k: v for k, v in metrics.items() if "t2i" in k or "gallery" in k})

# 4. Free-text queries against the gallery. RetrievalModel replays the preprocessing recorded at
#    training time (title normalisation, max_length, gallery flip rule, decode options).
model = RetrievalModel.from_pretrained(str(model_dir), str(work / "adapter"), device="cpu")
print(model)
queries = ["红色条纹连衣裙", "黑色波点衬衫"]
gallery = sorted(Path("xfdata/image").glob("*.jpg"))[:200]
image_embeds = model.encode_images(gallery)  # paths or PIL images
text_embeds = model.encode_texts(queries)
scores, indices = rank(text_embeds, image_embeds, k=3)
for query, row, score in zip(queries, indices, scores):
    print(query, [gallery[i].name for i in row], score.round(3))
