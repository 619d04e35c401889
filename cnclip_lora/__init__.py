"""cnclip-lora: fine-tune Chinese-CLIP with LoRA for Chinese text-to-image retrieval.

The public API, for notebooks and scripts (the ``cnclip-lora`` command wraps the same functions):

* data: :func:`load_competition_data`, :func:`check_data`
* model: :func:`load_model_and_processor`, :func:`apply_lora`
* training: :func:`train`, :class:`CnClipLoraTrainer`, :class:`ImageTextCollator`, :class:`ContrastiveLoss`
* retrieval: :func:`load_retrieval_model`, :func:`retrieve`, :func:`evaluate`, :func:`rank`, :func:`assign`
* metrics: :func:`recall_at_k`; ``cnclip_lora.recall_metric.RetrievalRecall`` (an ``evaluate.Metric``)
* hub: :func:`push_adapter`, :func:`resolve_adapter`
"""

from cnclip_lora.collate import ImageTextCollator, Preprocessing
from cnclip_lora.data import check_data, load_competition_data
from cnclip_lora.errors import CnClipLoraError, ConfigError, DataError, UnsafeArtifactError
from cnclip_lora.hub import push_adapter, resolve_adapter
from cnclip_lora.loss import ContrastiveLoss
from cnclip_lora.metrics import recall_at_k
from cnclip_lora.modeling import apply_lora, load_model_and_processor
from cnclip_lora.ranking import assign, rank
from cnclip_lora.retrieve import RetrievalArguments, evaluate, load_retrieval_model, retrieve
from cnclip_lora.train import train
from cnclip_lora.trainer import CnClipLoraTrainer

__version__ = "0.1.0"

__all__ = [
    "CnClipLoraError",
    "CnClipLoraTrainer",
    "ConfigError",
    "ContrastiveLoss",
    "DataError",
    "ImageTextCollator",
    "Preprocessing",
    "RetrievalArguments",
    "UnsafeArtifactError",
    "apply_lora",
    "assign",
    "check_data",
    "evaluate",
    "load_competition_data",
    "load_model_and_processor",
    "load_retrieval_model",
    "push_adapter",
    "rank",
    "recall_at_k",
    "resolve_adapter",
    "retrieve",
    "train",
]
