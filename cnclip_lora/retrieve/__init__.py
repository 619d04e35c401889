"""The retrieval applications on the inference library: ``retrieve`` and ``evaluate`` (:mod:`.run`),
the HTML report, the search service and the ONNX export; each verb's options are the groups in
:mod:`.arguments`. Names are imported on first use, so importing this package is light.
"""

from __future__ import annotations

from cnclip_lora.utils.lazy import lazy_exports

_EXPORTS = {
    "EvaluateArguments": "cnclip_lora.retrieve.run",
    "RetrieveArguments": "cnclip_lora.retrieve.run",
    "RetrievalResult": "cnclip_lora.retrieve.run",
    "evaluate_retrieval": "cnclip_lora.retrieve.run",
    "retrieve": "cnclip_lora.retrieve.run",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
