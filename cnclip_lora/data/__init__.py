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

from cnclip_lora.data.checks import check_data, count_truncated, normalize_title, submission_order
from cnclip_lora.data.dataset import CompetitionData, load_competition_data
from cnclip_lora.data.report import DataReport, Problem
from cnclip_lora.data.split import parse_val_size
from cnclip_lora.data.tables import read_table
from cnclip_lora.inputs.images import IMAGE_EXTENSIONS, MAX_PIXELS_ENV, max_image_pixels, open_image

__all__ = [
    "parse_val_size",
    "IMAGE_EXTENSIONS",
    "CompetitionData",
    "DataReport",
    "Problem",
    "MAX_PIXELS_ENV",
    "check_data",
    "count_truncated",
    "load_competition_data",
    "max_image_pixels",
    "normalize_title",
    "open_image",
    "read_table",
    "submission_order",
]
