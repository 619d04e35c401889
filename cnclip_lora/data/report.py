"""What a data check found: located problems and the counts ``cnclip-lora check-data`` prints."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DataReport", "Problem", "SKIP_FLAG", "error_message"]

#: The option that turns bad training rows and gallery images into reported skips.
SKIP_FLAG = "--skip_bad_rows"


@dataclass
class Problem:
    """One thing wrong (or worth knowing) about the data, located as precisely as possible.

    Args:
        file: The path as the user gave it, e.g. ``"xfdata/train.csv"``.
        line: 1-based line in ``file`` (the header is line 1); ``None`` for file-level problems.
        message: What is wrong and how to fix it.
        fatal: Whether it stops training/prediction.
        kind: Short category used to group problems in :meth:`DataReport.summary`.
        skippable: True for a fatal problem that ``skip_bad_rows=True`` would turn into a skip.
    """

    file: str
    line: int | None
    message: str
    fatal: bool
    kind: str = "other"
    skippable: bool = field(default=False, repr=False)

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}, line {self.line}"
        return f"{where}: {self.message}"


@dataclass
class DataReport:
    """Counts and problems found in a data folder; what ``cnclip-lora check-data`` prints.

    ``n_val`` counts held-out pairs, ``n_val_gallery`` the images searched for them (held-out
    images plus the test gallery). ``truncated_titles`` is filled later by whoever tokenises.
    """

    problems: list[Problem]
    skipped_rows: int
    n_train: int
    n_val: int
    n_queries: int
    n_gallery: int
    n_val_gallery: int
    truncated_titles: int | None = None
    n_train_images: int = 0
    n_val_images: int = 0
    multi_caption_images: int = 0
    excluded_images: int = 0
    images_decoded: int = 0
    encodings: dict[str, str] = field(default_factory=dict)
    root: str = ""
    #: False when train.csv could not be read: the training, split and gallery counts are then unknown
    train_read: bool = True
    #: Which reader: "competition" (train.csv, image/) or "chinese-clip" (jsonl + tsv)
    layout: str = "competition"

    @property
    def ok(self) -> bool:
        """True when nothing fatal was found."""
        return not any(p.fatal for p in self.problems)

    @property
    def fatal_problems(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    def summary(self, max_per_group: int = 10) -> str:
        """A human-readable multi-line summary: counts first, then problems grouped by kind.

        Args:
            max_per_group: How many problems of one kind to list before "... and N more".
        """
        lines = [f"Data folder: {self.root}" + (f" (layout: {self.layout})" if self.layout != "competition" else "")]
        if self.train_read and self.layout != "competition":  # Chinese-CLIP's layout, a datasets dataset
            rows = [
                ("training pairs", f"{self.n_train:,} ({self.n_train_images:,} images; text, relevant image)"),
                ("held-out texts", f"{self.n_val:,} against {self.n_val_images:,} held-out images"),
                ("test texts", f"{self.n_queries:,} against {self.n_gallery:,} test images"),
                (
                    "multi-image texts" if self.layout == "chinese-clip" else "rows sharing a target",
                    f"{self.multi_caption_images:,}",
                ),
                ("skipped records", f"{self.skipped_rows:,}"),
            ]
        elif self.train_read:
            rows = [
                ("training pairs", f"{self.n_train:,} ({self.n_train_images:,} images)"),
                ("validation pairs", f"{self.n_val:,} ({self.n_val_images:,} held-out images)"),
                ("test queries", f"{self.n_queries:,}"),
                ("test gallery", f"{self.n_gallery:,} images (every image train.csv does not name)"),
                ("validation gallery", f"{self.n_val_gallery:,} images (held-out + test gallery)"),
                ("multi-caption images", f"{self.multi_caption_images:,}"),
                ("skipped rows", f"{self.skipped_rows:,}"),
            ]
        else:  # nothing is known of the training pairs, so nothing of the split or the gallery either
            rows = [
                ("training pairs", "unknown: train.csv could not be read (see the problems below)"),
                ("test queries", f"{self.n_queries:,}"),
            ]
        if self.excluded_images:
            rows.append(("excluded images", f"{self.excluded_images:,}"))
        rows.append(("images decoded", f"{self.images_decoded:,}" if self.images_decoded else "none (existence only)"))
        if self.truncated_titles is not None:
            rows.append(("truncated titles", f"{self.truncated_titles:,}"))
        if self.encodings:
            rows.append(("encodings", ", ".join(f"{Path(k).name} {v}" for k, v in self.encodings.items())))
        width = max(len(name) for name, _ in rows)
        lines += [f"  {name + ':':<{width + 1}} {value}" for name, value in rows]

        n_fatal = len(self.fatal_problems)
        n_notes = len(self.problems) - n_fatal
        lines.append(f"Problems: {n_fatal} fatal, {n_notes} notes")
        groups: dict[tuple[bool, str], list[Problem]] = defaultdict(list)
        for p in self.problems:
            groups[(p.fatal, p.kind)].append(p)
        for (fatal, kind), items in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
            lines.append(f"  [{'fatal' if fatal else 'note'}] {kind} ({len(items)}):")
            lines += [f"    {p}" for p in items[:max_per_group]]
            if len(items) > max_per_group:
                lines.append(f"    ... and {len(items) - max_per_group} more")
        if n_fatal and any(p.skippable for p in self.problems):
            lines.append(f"Bad training rows can be skipped instead with {SKIP_FLAG}.")
        lines.append("OK" if self.ok else "NOT OK: fix the fatal problems above")
        return "\n".join(lines)


def error_message(where: str, problems: Sequence[Problem], limit: int = 20) -> str:
    """The text of a ``DataError``: the fatal problems (the first ``limit``), and how to skip them."""
    fatal = [p for p in problems if p.fatal] or list(problems)
    lines = [f"{where}: {len(fatal)} problem(s) must be fixed:"]
    lines += [f"  - {p}" for p in fatal[:limit]]
    if len(fatal) > limit:
        lines.append(f"  ... and {len(fatal) - limit} more (`cnclip-lora check-data` lists them all)")
    n_skippable = sum(p.skippable for p in fatal)
    if n_skippable:
        lines.append(
            f"{n_skippable} of them are bad training rows or gallery images: "
            f"fix them, or pass {SKIP_FLAG} to skip them"
        )
    return "\n".join(lines)
