"""Training: the ``train`` entry point, the Trainer subclass, the contrastive loss (plain and
cached-gradient), the unique-image sampler, FLOP counting, the pixel cache and output-folder rules."""

from cnclip_lora.training.run import TrainResult, run_training, train
from cnclip_lora.training.trainer import CnClipLoraTrainer

__all__ = ["CnClipLoraTrainer", "TrainResult", "run_training", "train"]
