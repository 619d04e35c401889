"""Chinese-CLIP's own dataset layout (MUGE, Flickr30K-CN, COCO-CN ship this way), read into the
package's :class:`~cnclip_lora.data.dataset.CompetitionData` so every verb takes it.

Per split (``train``, ``valid``, ``test``; those present), either the files or the LMDB
``cn_clip/preprocess/build_lmdb_dataset.py`` builds from them (``lmdb/{split}/pairs`` and ``imgs``;
its pair records are pickles, read by :class:`PlainRecordUnpickler`, which refuses every global):

* ``{split}_texts.jsonl``: ``{"text_id": int, "text": str, "image_ids": [int, ...]}`` per line
  (several relevant images per text; a test split may have empty ``image_ids``);
* ``{split}_imgs.tsv``: ``image_id<TAB>base64 of the image file`` per line.

Both files are streamed line by line (memory grows with the number of texts and image ids, never
with image bytes). Each image's bytes are written once, as the file they encode, into the
package's ``images`` cache (keyed by the tsv's path and stat identity), so the images then take
the one image path every other source takes (EXIF, transparency, 16-bit, the pixel limit, the
pixel cache). ``train`` gives the training pairs (one per text and relevant image), ``valid`` the
held-out split (each text against the valid images, with all its relevant images as positives)
and ``test`` the queries and gallery (scored when its texts carry ``image_ids``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cnclip_lora.data.report import Problem
from cnclip_lora.errors import ConfigError

__all__ = [
    "SPLITS",
    "CnClipSplit",
    "PlainRecordUnpickler",
    "image_extension",
    "images_file",
    "is_cnclip_layout",
    "load_cnclip_data",
    "plain_pair",
    "read_split",
    "texts_file",
    "write_image_file",
]

#: The split names Chinese-CLIP's tools use, in this order.
SPLITS = ("train", "valid", "test")

#: File signatures of the image formats Pillow reads that these datasets hold.
_SIGNATURES = {
    b"\xff\xd8\xff": "jpg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"BM": "bmp",
    b"RIFF": "webp",
}


def texts_file(root: Path, split: str) -> Path:
    return root / f"{split}_texts.jsonl"


def images_file(root: Path, split: str) -> Path:
    return root / f"{split}_imgs.tsv"


def lmdb_dir(root: Path, split: str) -> Path:
    """``lmdb/{split}`` as ``cn_clip/preprocess/build_lmdb_dataset.py`` writes it (``imgs``, ``pairs``)."""
    return root / "lmdb" / split


def is_cnclip_layout(root: str | os.PathLike) -> bool:
    """True when ``root`` holds a Chinese-CLIP texts file or LMDB (and no competition ``train.csv``)."""
    root = Path(root)
    if (root / "train.csv").exists():
        return False
    return any(texts_file(root, s).is_file() or (lmdb_dir(root, s) / "pairs").is_dir() for s in SPLITS)


class PlainRecordUnpickler(pickle.Unpickler):
    """Unpickles only plain data: every global (class, function, module attribute) is refused, so a
    record cannot construct objects or call anything; what remains is tuples, numbers, strings."""

    def find_class(self, module: str, name: str):  # noqa: D102
        raise pickle.UnpicklingError(f"refused: the record names {module}.{name} (only plain tuples are read)")

    def persistent_load(self, pid):  # noqa: D102
        raise pickle.UnpicklingError("refused: the record holds a persistent reference")


def plain_pair(blob: bytes) -> tuple[int, int, str] | str:
    """An LMDB pair record ``pickle.dumps((image_id, text_id, text))``, or why it is refused."""
    try:
        value = PlainRecordUnpickler(io.BytesIO(blob)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as err:
        return f"not a plain pickled tuple ({err})"
    if (
        not isinstance(value, tuple)
        or len(value) != 3
        or not _is_int(value[0])
        or not _is_int(value[1])
        or not isinstance(value[2], str)
    ):
        return f"not an (image_id, text_id, text) tuple of two integers and a string: {type(value).__name__}"
    return value


@dataclass
class CnClipSplit:
    """One split as read: texts (with their relevant image ids), the images written to files, problems."""

    name: str
    #: ``(text_id, text, image_ids, line)`` per usable text line
    texts: list[tuple[int, str, list[int], int]] = field(default_factory=list)
    #: image_id -> file name inside the image folder, for every usable image line
    images: dict[int, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8-sig", errors="strict", newline="") as fh:
        for number, line in enumerate(fh, start=1):
            yield number, line.rstrip("\r\n")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_texts(root: Path, split: CnClipSplit, disp: str) -> None:
    path = texts_file(root, split.name)
    seen: dict[int, int] = {}
    try:
        for line, raw in _lines(path):
            if not raw.strip():
                continue

            def bad(msg: str, line: int = line) -> None:
                split.problems.append(Problem(disp, line, msg, True, "bad text record"))

            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as err:
                bad(f"not a JSON object ({err.msg} at column {err.colno}); each line is one "
                    '{"text_id": ..., "text": ..., "image_ids": [...]}')  # fmt: skip
                continue
            if not isinstance(obj, dict):
                bad('not a JSON object; each line is one {"text_id": ..., "text": ..., "image_ids": [...]}')
                continue
            missing = [k for k in ("text_id", "text", "image_ids") if k not in obj]
            if missing:
                bad(f"no {', '.join(repr(k) for k in missing)} key; each line needs text_id, text and image_ids")
                continue
            text_id, text, image_ids = obj["text_id"], obj["text"], obj["image_ids"]
            if not _is_int(text_id):
                bad(f"text_id {text_id!r} is not an integer (the official tools need integer ids)")
                continue
            if not isinstance(text, str) or not text.strip():
                bad(f"text_id {text_id}: the text is empty or not a string")
                continue
            if not isinstance(image_ids, list) or not all(_is_int(i) for i in image_ids):
                bad(f"text_id {text_id}: image_ids must be a list of integers, got {image_ids!r:.60}")
                continue
            if text_id in seen:
                bad(f"text_id {text_id} is given twice (first on line {seen[text_id]})")
                continue
            seen[text_id] = line
            split.texts.append((text_id, text, sorted(set(image_ids)), line))
    except UnicodeDecodeError as err:
        split.problems.append(
            Problem(disp, None, f"not UTF-8 text ({err.reason}); save it as UTF-8", True, "encoding")
        )


def _decode_image_bytes(payload: str) -> bytes | str:
    """The image file ``payload`` encodes (standard or urlsafe base64), or why it cannot be one."""
    data = payload.strip()
    try:
        blob = base64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as err:
        return f"the base64 is damaged ({err}); re-encode the image file"
    if not blob:
        return "the base64 is empty"
    if image_extension(blob) is None:
        return "the decoded bytes are not an image file (JPEG, PNG, GIF, BMP or WebP)"
    return blob


def image_extension(blob: bytes) -> str | None:
    """The file extension of an image file's bytes by their signature, ``None`` if not an image."""
    return next((ext for sig, ext in _SIGNATURES.items() if blob.startswith(sig)), None)


def image_folder_for(tsv: Path, cache: Path) -> Path:
    """Where the images of ``tsv`` are written: keyed by its path and stat identity, so an edited
    tsv gets a fresh folder and an unchanged one is reused."""
    st = tsv.stat()
    key = f"{tsv.resolve()}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    return cache / hashlib.sha256(key.encode()).hexdigest()[:24]


def _images_source(root: Path, split: str) -> Path:
    """The file (tsv) or LMDB a split's images come from, as problems name it."""
    return images_file(root, split) if images_file(root, split).is_file() else lmdb_dir(root, split) / "imgs"


def _images_folder(root: Path, split: str, cache: Path) -> Path | None:
    """Where a split's images were written (from its tsv, else its LMDB), ``None`` if it has neither."""
    if images_file(root, split).is_file():
        return image_folder_for(images_file(root, split), cache)
    data = lmdb_dir(root, split) / "imgs" / "data.mdb"
    return image_folder_for(data, cache) if data.is_file() else None


def write_image_file(target: Path, blob: bytes) -> None:
    """``blob`` at ``target`` through a temporary name beside it, so no file there is ever partial
    (one rename per image: a folder of a million images is written in one pass)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, target)


def _signature_extension(payload: str) -> str | None:
    """The image format from the first bytes of a base64 payload, without decoding the rest."""
    try:
        head = base64.b64decode(payload[:16].replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return image_extension(head)


def _read_images(root: Path, split: CnClipSplit, disp: str, out_dir: Path) -> None:
    path = images_file(root, split.name)
    done = out_dir / ".complete"
    # A folder completed from this very tsv (its stat identity keys the folder) was checked then:
    # its images are taken as they are, reading only each payload's first bytes.
    reuse = done.is_file()
    seen: dict[int, int] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        for line, raw in _lines(path):
            if not raw.strip():
                continue

            def bad(msg: str, line: int = line) -> None:
                split.problems.append(Problem(disp, line, msg, True, "bad image record"))

            image_id, sep, payload = raw.partition("\t")
            if not sep:
                bad("no TAB: each line is image_id<TAB>base64 of the image file")
                continue
            try:
                number = int(image_id)
            except ValueError:
                bad(f"image_id {image_id[:40]!r} is not an integer")
                continue
            if number in seen:
                bad(f"image_id {number} is given twice (first on line {seen[number]})")
                continue
            seen[number] = line
            ext = _signature_extension(payload) if reuse else None
            if ext is not None and (out_dir / f"{number}.{ext}").is_file():
                split.images[number] = f"{number}.{ext}"
                continue
            blob = _decode_image_bytes(payload)
            if isinstance(blob, str):
                bad(f"image_id {number}: {blob}")
                continue
            name = f"{number}.{image_extension(blob)}"
            write_image_file(out_dir / name, blob)
            split.images[number] = name
    except UnicodeDecodeError as err:
        split.problems.append(Problem(disp, None, f"not UTF-8 text ({err.reason})", True, "encoding"))
        return
    if not split.problems:
        done.write_text("ok\n")


def _read_lmdb(root: Path, name: str, image_cache: Path, disp_root: str) -> CnClipSplit:
    """One split from its LMDB: the pair records through :class:`PlainRecordUnpickler` (no record
    can run code), the images by the ids the pairs name, written as files like the tsv's."""
    try:
        import lmdb
    except ImportError:
        raise ConfigError(
            f"{lmdb_dir(root, name)}: reading Chinese-CLIP's LMDB needs the lmdb package: "
            "pip install 'cnclip-lora[lmdb]'"
        ) from None
    split = CnClipSplit(name)
    folder = lmdb_dir(root, name)
    disp_pairs, disp_imgs = f"{disp_root}/lmdb/{name}/pairs", f"{disp_root}/lmdb/{name}/imgs"
    by_text: dict[int, tuple[str, list[int], int]] = {}
    env = lmdb.open(str(folder / "pairs"), readonly=True, lock=False, readahead=False, subdir=True)
    try:
        with env.begin() as txn:
            for key, blob in txn.cursor():
                if key == b"num_samples":
                    continue
                record = int(key) if key.isdigit() else key.decode("utf-8", "replace")
                pair = plain_pair(blob)
                if isinstance(pair, str):
                    split.problems.append(
                        Problem(disp_pairs, None, f"record {record}: {pair}", True, "bad text record")
                    )
                    continue
                image_id, text_id, text = pair
                entry = by_text.setdefault(text_id, (text, [], record if isinstance(record, int) else 0))
                entry[1].append(image_id)
    finally:
        env.close()
    split.texts = [
        (t, text, sorted(set(ids)), rec) for t, (text, ids, rec) in sorted(by_text.items(), key=lambda x: x[1][2])
    ]
    out_dir = _images_folder(root, name, image_cache) or image_cache / "missing"
    out_dir.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(folder / "imgs"), readonly=True, lock=False, readahead=False, subdir=True)
    try:
        with env.begin() as txn:
            for key, payload in txn.cursor():  # every image: the gallery holds the unnamed ones too
                if key == b"num_images":
                    continue
                try:
                    image_id = int(key)
                except ValueError:
                    msg = f"key {key[:40]!r} is not an integer image_id"
                    split.problems.append(Problem(disp_imgs, None, msg, True, "bad image record"))
                    continue
                blob = _decode_image_bytes(payload.decode("ascii", "replace"))
                if isinstance(blob, str):
                    msg = f"image_id {image_id}: {blob}"
                    split.problems.append(Problem(disp_imgs, None, msg, True, "bad image record"))
                    continue
                target = out_dir / f"{image_id}.{image_extension(blob)}"
                if not target.is_file():
                    write_image_file(target, blob)
                split.images[image_id] = target.name
    finally:
        env.close()
    return split


def read_split(root: Path, name: str, image_cache: Path, disp_root: str) -> CnClipSplit | None:
    """Read one split (``None`` when neither its texts file nor its LMDB is there); every problem is collected."""
    texts, imgs = texts_file(root, name), images_file(root, name)
    if not texts.is_file() and (lmdb_dir(root, name) / "pairs").is_dir():
        split = _read_lmdb(root, name, image_cache, disp_root)
        _check_image_ids(split, f"{disp_root}/lmdb/{name}/pairs", f"lmdb/{name}/imgs")
        return split
    if not texts.is_file():
        return None
    split = CnClipSplit(name)
    _read_texts(root, split, f"{disp_root}/{texts.name}")
    if not imgs.is_file():
        split.problems.append(
            Problem(f"{disp_root}/{imgs.name}", None, f"missing: the images of {texts.name}", True, "missing file")
        )
        return split
    _read_images(root, split, f"{disp_root}/{imgs.name}", image_folder_for(imgs, image_cache))
    _check_image_ids(split, f"{disp_root}/{texts.name}", imgs.name)
    return split


def _check_image_ids(split: CnClipSplit, where: str, images_name: str) -> None:
    """Every relevant image a text names must be a usable image of the split."""
    for text_id, _, image_ids, line in split.texts:
        unknown = [i for i in image_ids if i not in split.images]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            msg = f"text_id {text_id}: image_id {unknown[0]} has no usable image in {images_name}{more}"
            split.problems.append(Problem(where, line if "jsonl" in where else None, msg, True, "bad text record"))


def _components(pairs: list[tuple[int, int]]) -> dict[int, int]:
    """Union-find over (text_id, image_id) pairs: text_id -> the id of its group (texts sharing an
    image, and images sharing a text, are one group: they must never be each other's negatives).
    Texts are keyed ``2 * text_id``, images ``2 * image_id + 1``: plain ints, light for millions."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for text_id, image_id in pairs:
        a, b = find(2 * text_id), find(2 * image_id + 1)
        if a != b:
            parent[a] = b
    roots: dict[int, int] = {}
    return {t: roots.setdefault(find(2 * t), len(roots)) for t, _ in pairs}


def load_cnclip_data(
    data_dir: str | os.PathLike,
    *,
    skip_bad_rows: bool = False,
    check_images: bool = True,
    require_queries: bool = True,
    num_workers: int | None = None,
    use_answers: bool = True,
    image_cache: str | os.PathLike | None = None,
    raise_on_problems: bool = True,
):
    """Read a Chinese-CLIP layout folder as :class:`~cnclip_lora.data.dataset.CompetitionData`.

    ``val`` is the ``valid`` split (each text with all its relevant images as ``labels``);
    ``queries``/``gallery`` the ``test`` split (``answers`` when its texts have ``image_ids``).
    With ``skip_bad_rows`` a bad record or unreadable image is skipped and counted instead of fatal.
    """
    import pandas as pd

    from cnclip_lora.data.dataset import CompetitionData, _dataset
    from cnclip_lora.data.report import DataReport, error_message
    from cnclip_lora.errors import DataError
    from cnclip_lora.inputs.images import decode_errors
    from cnclip_lora.utils.caches import usable_cache_dir

    root = Path(data_dir)
    cache = Path(image_cache) if image_cache is not None else usable_cache_dir(None, "images", required=True)
    splits = {name: read_split(root, name, cache, str(data_dir)) for name in SPLITS}
    problems = [p for s in splits.values() if s is not None for p in s.problems]
    if require_queries and splits["test"] is None:
        problems.append(Problem(str(texts_file(root, "test")), None, "missing: the test texts", True, "missing file"))
    decoded = 0
    excluded = 0
    for split in (s for s in splits.values() if s is not None):
        folder = _images_folder(root, split.name, cache)
        if folder is None:
            continue
        if check_images and split.images:
            names = sorted(split.images.values())
            errors = decode_errors(folder, names, num_workers)
            decoded += len(names)
            by_name = {v: k for k, v in split.images.items()}
            for name, why in sorted(errors.items()):
                if why:
                    problems.append(
                        Problem(str(_images_source(root, split.name)), None,
                                f"image_id {by_name[name]} cannot be read ({why})", True, "corrupt image")
                    )  # fmt: skip
                    del split.images[by_name[name]]
                    excluded += 1
        prefix = folder.name
        split.images = {i: f"{prefix}/{n}" for i, n in split.images.items()}
    if skip_bad_rows:
        problems = [
            Problem(p.file, p.line, p.message + " (skipped)", False, p.kind) if p.kind != "missing file" else p
            for p in problems
        ]
    else:
        problems = [Problem(p.file, p.line, p.message, p.fatal, p.kind, skippable=p.kind != "missing file")
                    for p in problems]  # fmt: skip
    skipped = sum(not p.fatal and p.message.endswith("(skipped)") for p in problems)

    def usable(split: CnClipSplit | None) -> list[tuple[int, str, list[int], int]]:
        if split is None:
            return []
        return [(t, text, [i for i in ids if i in split.images], line) for t, text, ids, line in split.texts]

    train_texts = usable(splits["train"])
    pairs = [(t, i) for t, _, ids, _ in train_texts for i in ids]
    group_of = _components(pairs)
    train_rows = [(text, splits["train"].images[i], t, group_of[t]) for t, text, ids, _ in train_texts for i in ids]
    val_split = splits["valid"]
    val_names = sorted(val_split.images.values()) if val_split is not None else []
    val_index = {n: k for k, n in enumerate(val_names)}
    val_texts = usable(val_split)  # a text without relevant images stays: it is a miss, as officially
    test_split = splits["test"]
    gallery = sorted(test_split.images.values()) if test_split is not None else []
    gallery_index = {n: k for k, n in enumerate(gallery)}
    test_texts = usable(test_split)
    answers = None
    if use_answers and test_texts and all(ids for _, _, ids, _ in test_texts):
        labels = [[gallery_index[test_split.images[i]] for i in ids] for _, _, ids, _ in test_texts]
        answers = pd.DataFrame({"query": range(len(test_texts)), "label": [x[0] for x in labels], "labels": labels})
    multi = sum(1 for t, _, ids, _ in train_texts if len(ids) > 1)
    report = DataReport(
        problems,
        skipped,
        len(train_rows),
        len(val_texts),
        len(test_texts),
        len(gallery),
        len(val_names),
        n_train_images=len({r[1] for r in train_rows}),
        n_val_images=len(val_names),
        multi_caption_images=multi,
        excluded_images=excluded,
        images_decoded=decoded,
        root=str(data_dir),
        layout="chinese-clip",
    )
    if raise_on_problems and not report.ok:
        raise DataError(error_message(str(data_dir), report.problems), report.fatal_problems)
    str_, int_ = "string", "int64"
    val_labels = [[val_index[val_split.images[i]] for i in ids] for _, _, ids, _ in val_texts]
    return CompetitionData(
        root=root,
        image_dir=cache,
        train=_dataset(
            {
                "title": [r[0] for r in train_rows],
                "path": [r[1] for r in train_rows],
                "row": list(range(len(train_rows))),
                "text_id": [r[2] for r in train_rows],
                "group": [r[3] for r in train_rows],
            },
            {"title": str_, "path": str_, "row": int_, "text_id": int_, "group": int_},
        ),
        val=_dataset(
            {
                "title": [x[1] for x in val_texts],
                "path": [val_names[lab[0]] if lab else "" for lab in val_labels],
                "row": list(range(len(val_texts))),
                "label": [lab[0] if lab else -1 for lab in val_labels],
                "text_id": [x[0] for x in val_texts],
            },
            {"title": str_, "path": str_, "row": int_, "label": int_, "text_id": int_},
        ),
        queries=_dataset(
            {"title": [x[1] for x in test_texts], "query": list(range(len(test_texts)))},
            {"title": str_, "query": int_},
        ),
        gallery=_dataset({"path": gallery}, {"path": str_}),
        val_gallery=_dataset({"path": val_names}, {"path": str_}),
        sample_submit=None,
        answers=answers,
        report=report,
        val_labels_override=val_labels,
        ids={
            "val_text": [x[0] for x in val_texts],
            "val_image": {n: i for i, n in (val_split.images.items() if val_split else [])},
            "test_text": [x[0] for x in test_texts],
            "test_image": {n: i for i, n in (test_split.images.items() if test_split else [])},
        },
    )
