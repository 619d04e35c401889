"""The inference library: the retrieval model object, embedding, ranking, metrics, the evaluator
and the ONNX engine. The applications built on it (retrieve, evaluate, report, serve, export)
live in :mod:`cnclip_lora.retrieve`; submodules import lazily, so ``metrics`` needs only numpy."""
