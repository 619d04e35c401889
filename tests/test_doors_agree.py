"""Every door embeds alike: ``retrieve``, ``evaluate``, ``report``, ``serve`` (HTTP GET and POST), the
ONNX backend and the Python API give the same scores for one base + adapter, on hostile titles and
images, and the shared image path equals the official Chinese-CLIP transform.

Each door is observed through what it hands a user (the top-k file's scores, the service's JSON,
the report's ranks and scores, ``evaluate``'s metrics), with ``--top_k`` the whole gallery, so the
full query x gallery score matrix of each door is compared with the API's. Equal scores over the
whole gallery for L2-normalised embeddings mean equal embeddings up to a rotation both sides
share; the API's embeddings are in turn compared with the official path (cosine >= 0.9999).
The same holds for an adapter recorded with ``nfkc`` titles and with ``--flip always``: each door
replays the record.
"""

from __future__ import annotations

import contextlib
import html as html_lib
import io
import json
import re
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from official_ref import reference_available, run_reference
from PIL import Image
from serve_utils import http, make_random_adapter, start_server

from cnclip_lora.adapter.record import Preprocessing, RunRecord
from cnclip_lora.commands import main
from cnclip_lora.inference.metrics import recall_from_ranks, true_ranks
from cnclip_lora.inference.model import RetrievalModel

TITLES = [
    "云思木想ＸＬ２０１９秋装新款长袖Ｔ恤女",  # full-width letters and digits
    "“复古”碎花连衣裙 “夏季”",  # curly quotes
    "[SEP][CLS]红色[UNK]毛衣[PAD][MASK]",  # literal special-token strings
    "超长标题加绒加厚保暖" * 12,  # far over 52 tokens
    "夏季新款T恤😀👗🔥 ins风",  # emoji
    "Nike AIR Max 2019 男鞋",
]
PLAIN = ["plain.jpg", "large.jpg"]  # images the official transform reads exactly as the package does


def _gallery(image_dir: Path) -> list[str]:
    rng = np.random.default_rng(0)
    noise = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    Image.fromarray(noise(80, 120)).save(image_dir / "plain.jpg", quality=95)
    Image.fromarray(noise(1500, 1100)).save(image_dir / "large.jpg", quality=90)
    rotated = Image.fromarray(noise(60, 100))
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees on display
    rotated.save(image_dir / "exif_rotated.jpg", exif=exif.tobytes())
    rgba = np.concatenate([noise(70, 70), rng.integers(0, 256, (70, 70, 1), dtype=np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(image_dir / "transparent.png")
    Image.fromarray(rng.integers(0, 65536, (64, 90), dtype=np.uint16)).save(image_dir / "deep16.png")
    Image.fromarray(noise(50, 50)).save(image_dir / "other.jpg")
    return sorted(p.name for p in image_dir.iterdir())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("doors") / "data"
    image_dir = root / "image"
    image_dir.mkdir(parents=True)
    gallery = _gallery(image_dir)
    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(image_dir / f"train_{i}.jpg")
    (root / "train.csv").write_text(
        "title\tpath\n" + "".join(f"训练标题{i}号\ttrain_{i}.jpg\n" for i in range(3)), encoding="utf-8"
    )
    frame = pd.DataFrame({"title": TITLES})
    frame.to_csv(root / "test_query.csv", index=False, encoding="utf-8")
    pd.DataFrame(
        {"query": range(len(TITLES)), "path": [gallery[i % len(gallery)] for i in range(len(TITLES))]}
    ).to_csv(root / "test_answers.csv", index=False)
    return root


RECORDS = {
    "official": Preprocessing(train_flip="random"),
    "nfkc": Preprocessing(train_flip="random", title_normalization="nfkc"),
    "flip_always": Preprocessing(train_flip="always"),
}


@pytest.fixture(scope="module", params=sorted(RECORDS))
def door_setup(request, tiny_model_dir, data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"adapter-{request.param}")
    adapter = make_random_adapter(tiny_model_dir, tmp / "adapter")
    RunRecord(RECORDS[request.param]).save(adapter)
    model = RetrievalModel.from_pretrained(str(tiny_model_dir), str(adapter), device="cpu")
    gallery_names = sorted(p.name for p in (data_dir / "image").iterdir() if not p.name.startswith("train_"))
    paths = [str(data_dir / "image" / n) for n in gallery_names]
    api = model.encode_texts(TITLES) @ model.encode_images(paths).T
    return request.param, model, adapter, gallery_names, api, tmp


def _common(tiny_model_dir: Path, adapter: Path, data_dir: Path) -> list[str]:
    return [
        "--model_name_or_path",
        str(tiny_model_dir),
        "--adapter",
        str(adapter),
        "--data_dir",
        str(data_dir),
        "--device",
        "cpu",
        "--cache_dir",
        "",
    ]


def _topk_matrix(path: Path, names: list[str]) -> np.ndarray:
    frame = pd.read_csv(path)
    out = np.full((frame["query"].max() + 1, len(names)), np.nan)
    for row in frame.itertuples():
        out[row.query, names.index(row.path)] = row.score
    return out


def test_api_images_equal_the_official_path(door_setup, tmp_path):
    """The API's image embeddings (which every door shares, as the tests below show) equal the merged
    model on the official transform's pixels. Titles: ``tests/test_official.py`` shows the token ids
    equal ``cn_clip.clip.tokenize`` on the official vocabulary, which the tiny model does not use."""
    name, model, _, _, _, _ = door_setup
    if name == "flip_always":
        pytest.skip("the official transform has no flip: only the unflipped records are compared with it")
    why = reference_available()
    assert why is None, why  # make test installs the reference; its absence is a set-up failure
    import torch

    from cnclip_lora.modeling import get_image_embeds

    size = model.image_processor.size["height"]
    data = tmp_path / "img"
    data.mkdir()
    _gallery(data)
    paths = [str(data / n) for n in PLAIN]
    pixels = run_reference({"op": "pixels", "paths": paths, "size": size}, tmp_path)["pixel_values"]
    with torch.no_grad():
        ref_img = torch.nn.functional.normalize(get_image_embeds(model.model, pixels).float(), dim=-1).numpy()
    assert np.min(np.sum(model.encode_images(paths) * ref_img, axis=1)) >= 0.9999


def test_retrieve_and_evaluate_equal_the_api(door_setup, tiny_model_dir, data_dir, tmp_path):
    _, _, adapter, names, api, _ = door_setup
    topk = tmp_path / "topk.csv"
    assert (
        main(
            [
                "retrieve",
                *_common(tiny_model_dir, adapter, data_dir),
                "--topk_output",
                str(topk),
                "--top_k",
                str(len(names)),
            ]
        )
        == 0
    )
    np.testing.assert_allclose(_topk_matrix(topk, names), api, atol=2e-5)

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["evaluate", *_common(tiny_model_dir, adapter, data_dir), "--split", "test"]) == 0
    metrics = json.loads(buf.getvalue())
    expected = recall_from_ranks(_ranks_of(api, names, data_dir))
    for key, value in expected.items():
        assert metrics[f"test_t2i_{key}"] == pytest.approx(value, abs=1e-3)


def _ranks_of(scores: np.ndarray, names: list[str], data_dir: Path) -> np.ndarray:
    """Full-gallery ranks of the answers under a score matrix (its rows against an identity gallery)."""
    labels = [names.index(p) for p in pd.read_csv(data_dir / "test_answers.csv")["path"]]
    return true_ranks(np.asarray(scores, dtype=np.float32), np.eye(len(names), dtype=np.float32), labels)


def test_onnx_backend_equals_the_api(door_setup, tiny_model_dir, data_dir, tmp_path):
    _, _, adapter, names, api, _ = door_setup
    export = tmp_path / "onnx"
    assert (
        main(["export-onnx", str(export), "--model_name_or_path", str(tiny_model_dir), "--adapter", str(adapter)]) == 0
    )
    topk = tmp_path / "topk.csv"
    assert (
        main(
            [
                "retrieve",
                "--model_name_or_path",
                str(export),
                "--backend",
                "onnx",
                "--data_dir",
                str(data_dir),
                "--device",
                "cpu",
                "--cache_dir",
                "",
                "--topk_output",
                str(topk),
                "--top_k",
                str(len(names)),
            ]
        )
        == 0
    )
    np.testing.assert_allclose(_topk_matrix(topk, names), api, atol=1e-4)


def test_report_equals_the_api(door_setup, tiny_model_dir, data_dir, tmp_path):
    _, _, adapter, names, api, _ = door_setup
    page = tmp_path / "report.html"
    assert (
        main(
            [
                "report",
                *_common(tiny_model_dir, adapter, data_dir),
                "--split",
                "test",
                "--output",
                str(page),
                "--top_k",
                str(len(names)),
                "--max_queries",
                str(len(TITLES)),
            ]
        )
        == 0
    )
    text = page.read_text(encoding="utf-8")
    expected_ranks = _ranks_of(api, names, data_dir)
    for block in re.findall(
        r'<div class="query" data-query="(\d+)">(.*?)</div></div>(?=<div class="query"|\s*<)', text, flags=re.S
    ):
        q = int(block[0])
        assert html_lib.unescape(re.search(r'<div class="title">(.*?)</div>', block[1]).group(1)) == TITLES[q]
        rank = int(re.search(r"rank under tuned: <b>(\d+)</b>", block[1]).group(1))
        assert rank == expected_ranks[q]
        shown = [float(s) for s in re.findall(r"<figcaption>(?:&#10003; )?(-?[\d.]+)</figcaption>", block[1])]
        np.testing.assert_allclose(shown, np.sort(api[q])[::-1], atol=1.5e-3)


def test_service_get_and_post_equal_the_api(door_setup, tiny_model_dir, data_dir):
    _, model, adapter, names, api, tmp = door_setup
    server = start_server(tmp, _common(tiny_model_dir, adapter, data_dir))
    try:
        k = len(names)
        status, body = http(
            "POST",
            server.url + "/search",
            json.dumps({"queries": TITLES, "k": k}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 200, body
        posted = json.loads(body)["results"]
        for q, title in enumerate(TITLES):
            status, body = http("GET", server.url + "/search?" + urllib.parse.urlencode({"q": title, "k": k}))
            assert status == 200, body
            got = json.loads(body)
            for result in (got, posted[q]):
                assert result["query"] == title
                row = np.full(k, np.nan)
                for hit in result["results"]:
                    row[names.index(hit["path"])] = hit["score"]
                np.testing.assert_allclose(row, api[q], atol=2e-5)
        long_title = json.loads(
            http("GET", server.url + "/search?" + urllib.parse.urlencode({"q": TITLES[3], "k": 1}))[1]
        )
        assert long_title["truncated"] is True
        query = urllib.parse.urlencode({"q": TITLES[2], "k": 1})
        special = json.loads(http("GET", server.url + "/search?" + query)[1])
        # counted as embedded: under official, literal [SEP]/[CLS] text is ordinary characters (as ids it is 11)
        assert special["tokens"] == model.count_tokens([TITLES[2]])[0]
        if model.preprocessing.title_normalization == "official":
            assert special["tokens"] > 20
    finally:
        server.stop()
