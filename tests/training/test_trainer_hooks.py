"""The private ``transformers.Trainer`` methods ``CnClipLoraTrainer`` overrides are pinned: when a
transformers release changes one, this fails, so the override is reviewed against the new body
rather than silently replacing behaviour the Trainer gained (a new branch, a renamed argument)."""

from __future__ import annotations

import hashlib
import inspect

import pytest
import transformers
from transformers import Trainer

from cnclip_lora.training.trainer import CnClipLoraTrainer

#: private method -> sha256 (first 16 hex digits) of its source in the transformers release the
#: override was written against. Review the override, then update the digest.
PINNED = {
    "_save": "b136889e87928376",
    "_clip_grad_norm": "ebfa9dc91d3088ab",
    "_get_grad_norm": "913ba6f52f074d10",
    "_get_train_sampler": "1580d7493244e637",
}


def _digest(name: str) -> str:
    return hashlib.sha256(inspect.getsource(getattr(Trainer, name)).encode()).hexdigest()[:16]


def test_every_private_override_is_pinned():
    """A new private override must be listed (and reasoned about) here and in the trainer's docstring."""
    private = {
        name
        for name, value in vars(CnClipLoraTrainer).items()
        if name.startswith("_") and not name.startswith("__") and callable(value) and hasattr(Trainer, name)
    }
    assert private == set(PINNED), f"private Trainer overrides not pinned: {sorted(private - set(PINNED))}"
    doc = CnClipLoraTrainer.__module__ and inspect.getmodule(CnClipLoraTrainer).__doc__
    for name in PINNED:
        assert f"``{name}``" in doc, f"{name} is overridden but not explained in the trainer module docstring"


@pytest.mark.parametrize("name", sorted(PINNED))
def test_overridden_trainer_method_is_unchanged(name):
    expected = PINNED[name]
    assert expected is not None, (
        f"pin {name}: its digest under transformers {transformers.__version__} is {_digest(name)}"
    )
    assert _digest(name) == expected, (
        f"transformers {transformers.__version__} changed Trainer.{name}: review CnClipLoraTrainer.{name} "
        "against the new body, then update its digest here"
    )
