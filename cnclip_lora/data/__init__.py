"""Read and validate the competition data folder once, up front, as ``datasets.Dataset``\\s.

The layout is the iFLYTEK 2024 one (REFERENCE.md §1)::

    DIR/train.csv          TAB-separated, header ``title<TAB>path``
    DIR/test_query.csv     comma CSV with a ``title`` column (other columns ignored)
    DIR/image/             every image, training and test alike
    DIR/sample_submit.csv  optional: comma CSV with a ``path`` column, one row per query
    DIR/test_answers.csv   optional: comma CSV ``query,path`` (written by the demo generator)

Everything is checked before any model is loaded, and every problem is collected
(:mod:`~cnclip_lora.data.checks`), so a user fixes a broken folder in one pass. The modules:
:mod:`~cnclip_lora.data.tables` (encodings, CSV parsing with line numbers),
:mod:`~cnclip_lora.data.checks` (the check steps and :func:`check_data`),
:mod:`~cnclip_lora.data.split` (the grouped train/validation split),
:mod:`~cnclip_lora.data.dataset` (:func:`load_competition_data`). Images are opened by
:func:`cnclip_lora.inputs.images.open_image` everywhere, so training and retrieval can never disagree
about them; its names are re-exported here for code that imported them from this package.
"""

from __future__ import annotations

from cnclip_lora.utils.lazy import lazy_exports

#: public name -> the module that defines it (imported on first use, so a light submodule such as
#: ``split`` does not pull pandas and the checks in with it).
_EXPORTS = {
    "check_data": "cnclip_lora.data.checks",
    "count_truncated": "cnclip_lora.data.checks",
    "normalize_title": "cnclip_lora.data.checks",
    "submission_order": "cnclip_lora.data.checks",
    "CompetitionData": "cnclip_lora.data.dataset",
    "load_competition_data": "cnclip_lora.data.dataset",
    "DataReport": "cnclip_lora.data.report",
    "Problem": "cnclip_lora.data.report",
    "parse_val_size": "cnclip_lora.data.split",
    "read_table": "cnclip_lora.data.tables",
    "IMAGE_EXTENSIONS": "cnclip_lora.inputs.images",
    "MAX_PIXELS_ENV": "cnclip_lora.inputs.images",
    "max_image_pixels": "cnclip_lora.inputs.images",
    "open_image": "cnclip_lora.inputs.images",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
