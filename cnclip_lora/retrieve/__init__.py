"""Retrieval: load a base model (+ adapter, merged), embed with ``datasets.map`` (cached), rank,
assign, write the submission; evaluation, the HTML report, the search service and ONNX export.

``from cnclip_lora.retrieve import retrieve`` is the retrieval entry point.
"""

from cnclip_lora.retrieve.run import (
    RetrievalArguments,
    RetrievalResult,
    evaluate_retrieval,
    load_retrieval_model,
    retrieve,
)

__all__ = ["RetrievalArguments", "RetrievalResult", "evaluate_retrieval", "load_retrieval_model", "retrieve"]
