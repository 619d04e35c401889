"""cnclip-lora: fine-tune Chinese-CLIP with LoRA for Chinese text-to-image retrieval.

The public API, for notebooks and scripts (the ``cnclip-lora`` command wraps the same functions):

* data: :func:`load_competition_data`, :func:`check_data`
* model: :func:`load_model_and_processor`, :func:`apply_lora`
* training: :func:`train` / :func:`run_training`, :class:`CnClipLoraTrainer`, the arguments dataclasses,
  :class:`ImageTextCollator`, :class:`ContrastiveLoss`
* inference: :class:`RetrievalModel` (``from_pretrained``, ``encode_texts``, ``encode_images``: every door
  embeds through it), :class:`RetrievalEvaluator`, :func:`rank`, :func:`assign`
* applications: :func:`retrieve` with :class:`RetrieveArguments`, :func:`evaluate_retrieval` with
  :class:`EvaluateArguments`
* metrics: :func:`recall_at_k`, :func:`true_ranks`, :func:`recall_from_ranks` (numpy only);
  ``cnclip_lora.inference.recall_metric.RetrievalRecall`` (an ``evaluate.Metric``)
* hub: :func:`push_adapter`, :func:`resolve_adapter`

Importing the package is light (no torch, no transformers): each name is imported from its module
on first use (PEP 562), so ``cnclip-lora --help``, ``check-data`` and ``make-demo-data`` start fast.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from cnclip_lora.utils.lazy import lazy_exports

try:
    __version__ = version("cnclip-lora")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

#: public name -> (module, attribute in it)
_EXPORTS: dict[str, tuple[str, str]] = {
    "CnClipLoraError": ("cnclip_lora.errors", "CnClipLoraError"),
    "ConfigError": ("cnclip_lora.errors", "ConfigError"),
    "DataError": ("cnclip_lora.errors", "DataError"),
    "UnsafeArtifactError": ("cnclip_lora.errors", "UnsafeArtifactError"),
    "check_data": ("cnclip_lora.data", "check_data"),
    "load_competition_data": ("cnclip_lora.data", "load_competition_data"),
    "ModelArguments": ("cnclip_lora.config", "ModelArguments"),
    "DataArguments": ("cnclip_lora.config", "DataArguments"),
    "LoraArguments": ("cnclip_lora.config", "LoraArguments"),
    "CnClipTrainingArguments": ("cnclip_lora.config", "CnClipTrainingArguments"),
    "RetrieveArguments": ("cnclip_lora.retrieve.arguments", "RetrieveArguments"),
    "EvaluateArguments": ("cnclip_lora.retrieve.arguments", "EvaluateArguments"),
    "RetrievalModel": ("cnclip_lora.inference.model", "RetrievalModel"),
    "retrieve": ("cnclip_lora.retrieve.run", "retrieve"),
    "Preprocessing": ("cnclip_lora.adapter.record", "Preprocessing"),
    "RunRecord": ("cnclip_lora.adapter.record", "RunRecord"),
    "ImageTextCollator": ("cnclip_lora.inputs.collate", "ImageTextCollator"),
    "load_model_and_processor": ("cnclip_lora.modeling", "load_model_and_processor"),
    "apply_lora": ("cnclip_lora.modeling", "apply_lora"),
    "train": ("cnclip_lora.training.run", "train"),
    "run_training": ("cnclip_lora.training.run", "run_training"),
    "CnClipLoraTrainer": ("cnclip_lora.training.trainer", "CnClipLoraTrainer"),
    "ContrastiveLoss": ("cnclip_lora.training.loss", "ContrastiveLoss"),
    "evaluate_retrieval": ("cnclip_lora.retrieve.run", "evaluate_retrieval"),
    "RetrievalEvaluator": ("cnclip_lora.inference.evaluator", "RetrievalEvaluator"),
    "rank": ("cnclip_lora.inference.search", "rank"),
    "assign": ("cnclip_lora.inference.search", "assign"),
    "recall_at_k": ("cnclip_lora.inference.metrics", "recall_at_k"),
    "recall_from_ranks": ("cnclip_lora.inference.metrics", "recall_from_ranks"),
    "true_ranks": ("cnclip_lora.inference.metrics", "true_ranks"),
    "push_adapter": ("cnclip_lora.adapter.hub", "push_adapter"),
    "resolve_adapter": ("cnclip_lora.adapter.hub", "resolve_adapter"),
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from cnclip_lora.adapter.hub import push_adapter, resolve_adapter
    from cnclip_lora.adapter.record import Preprocessing, RunRecord
    from cnclip_lora.config import CnClipTrainingArguments, DataArguments, LoraArguments, ModelArguments
    from cnclip_lora.data import check_data, load_competition_data
    from cnclip_lora.errors import CnClipLoraError, ConfigError, DataError, UnsafeArtifactError
    from cnclip_lora.inference.evaluator import RetrievalEvaluator
    from cnclip_lora.inference.metrics import recall_at_k, recall_from_ranks, true_ranks
    from cnclip_lora.inference.model import RetrievalModel
    from cnclip_lora.inference.search import assign, rank
    from cnclip_lora.inputs.collate import ImageTextCollator
    from cnclip_lora.modeling import apply_lora, load_model_and_processor
    from cnclip_lora.retrieve.arguments import EvaluateArguments, RetrieveArguments
    from cnclip_lora.retrieve.run import evaluate_retrieval, retrieve
    from cnclip_lora.training.loss import ContrastiveLoss
    from cnclip_lora.training.run import run_training, train
    from cnclip_lora.training.trainer import CnClipLoraTrainer


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
