"""The search service over real HTTP on loopback, its micro-batcher, and the pages in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serve_utils import chromium_driver, http, make_random_adapter, save_screenshot, start_server

pytest.importorskip("fastapi", reason="FastAPI not installed: pip install 'cnclip-lora[serve]'")
pytest.importorskip("uvicorn", reason="uvicorn not installed: pip install 'cnclip-lora[serve]'")

from cnclip_lora.retrieve.serve import MicroBatcher  # noqa: E402

SHOTS = os.environ.get("CNCLIP_SCREENSHOT_DIR")  # set to write the README screenshots


@pytest.fixture(scope="module")
def served(tiny_model_dir, demo_dir, tmp_path_factory):
    """A server over a copy of the demo gallery, with a symlink in it that points outside."""
    tmp = tmp_path_factory.mktemp("serve")
    gallery = tmp / "gallery"
    shutil.copytree(demo_dir / "image", gallery)
    secret = tmp / "secret.jpg"
    shutil.copy(next(gallery.iterdir()), secret)
    (gallery / "evil.jpg").symlink_to(secret)
    adapter = make_random_adapter(tiny_model_dir, tmp / "adapter")
    server = start_server(
        tmp,
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--image_dir",
            str(gallery),
            "--adapter",
            str(adapter),
            "--max_k",
            "20",
            "--max_batch",
            "8",
            "--cache_dir",
            str(tmp / "cache"),
        ],
    )
    yield server, gallery, adapter
    server.stop()


def _get(server, path: str):
    code, body = http("GET", server.url + path)
    return code, body


def _search(server, q: str, k: int = 5):
    code, body = _get(server, "/search?" + urllib.parse.urlencode({"q": q, "k": k}))
    assert code == 200, body
    return json.loads(body)


def test_search_ranks_like_retrieve(served, tiny_model_dir):
    """The service's ranking equals embedding the query with the package's own functions."""
    from cnclip_lora.inference.model import RetrievalModel
    from cnclip_lora.inference.search import rank

    server, gallery, adapter = served
    model = RetrievalModel.from_pretrained(str(tiny_model_dir), str(adapter), device="cpu")
    # The symlink out of the gallery is never part of it (see test_health).
    names = sorted(p.name for p in gallery.iterdir() if not p.is_symlink())
    g = model.encode_images([str(gallery / n) for n in names])
    # The second query has full-width characters: tokenised with the recorded (official) title
    # preparation, as retrieve tokenises titles, not NFKC-folded.
    for query in ("云思木想2019秋装新款高领长袖T恤女", "ＮＩＫＥ运动鞋４２码　男"):
        got = _search(server, query, k=7)
        q = model.encode_texts([query])
        scores, idx = rank(q, g, k=7)
        assert [r["path"] for r in got["results"]] == [names[i] for i in idx[0]]
        assert [r["score"] for r in got["results"]] == pytest.approx(scores[0].tolist(), abs=1e-4)
        assert got["truncated"] is False and got["tokens"] == model.count_tokens([query])[0]


def test_long_query_is_truncated_and_says_so(served):
    server, *_ = served
    got = _search(server, "长袖" * 60)
    assert got["truncated"] is True and got["tokens"] > got["max_length"] and "first" in got["note"]


def test_batch_post_equals_single_gets(served):
    server, *_ = served
    queries = ["连衣裙", "牛仔裤 男", "长袖T恤"]
    code, body = http(
        "POST",
        server.url + "/search",
        json.dumps({"queries": queries, "k": 4}).encode(),
        {"Content-Type": "application/json"},
    )
    assert code == 200
    batch = json.loads(body)["results"]
    singles = [_search(server, q, 4)["results"] for q in queries]
    # Same images in the same order; scores equal up to float noise (a batch is padded to its
    # longest title, a single query to its own length: masked padding, same embedding).
    assert [[r["path"] for r in b["results"]] for b in batch] == [[r["path"] for r in s] for s in singles]
    for b, single in zip(batch, singles):
        assert [r["score"] for r in b["results"]] == pytest.approx([r["score"] for r in single], abs=1e-5)


def test_concurrent_requests_get_their_own_answers(served):
    server, *_ = served
    queries = [f"女装{i}号连衣裙" for i in range(12)]
    alone = [_search(server, q, 3)["results"] for q in queries]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda q: _search(server, q, 3)["results"], queries))
    for a, b in zip(alone, together):
        assert [r["path"] for r in a] == [r["path"] for r in b]
        assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], abs=1e-4)


@pytest.mark.parametrize(
    "method, path, body, code, message",
    [
        ("GET", "/search?q=", None, 400, "q is empty"),
        ("GET", "/search", None, 400, "q is empty"),
        ("GET", "/search?q=%20%20", None, 400, "q is empty"),
        ("GET", "/search?q=a&k=0", None, 400, "k must be between 1 and 20"),
        ("GET", "/search?q=a&k=21", None, 400, "k must be between 1 and 20"),
        ("GET", "/search?q=a&k=abc", None, 422, "malformed request: query.k"),
        ("POST", "/search", b"not json", 400, "must be JSON"),
        ("POST", "/search", b'["a"]', 400, 'list "queries"'),
        ("POST", "/search", b'{"queries": "a"}', 400, 'list "queries"'),
        ("POST", "/search", b'{"queries": []}', 400, "no queries"),
        ("POST", "/search", b'{"queries": ["a", 3]}', 400, "item 1 is int"),
        ("POST", "/search", b'{"queries": ["a", ""]}', 400, "query 1 is empty"),
        ("POST", "/search", b'{"queries": ["a"], "k": "5"}', 400, "k must be an integer"),
        ("POST", "/search", json.dumps({"queries": ["a"] * 9}).encode(), 413, "at most 8 queries"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(served, method, path, body, code, message):
    server, *_ = served
    got_code, got = http(method, server.url + path, body, {"Content-Type": "application/json"})
    assert got_code == code, got
    assert message in json.loads(got)["detail"]


def _raw_get(server, raw_path: str) -> int:
    """GET with the path sent byte for byte (no client-side normalisation of ``..``)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("GET", raw_path, skip_accept_encoding=True)
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.mark.parametrize(
    "raw",
    [
        "/image/../secret.jpg",
        "/image/..%2Fsecret.jpg",
        "/image/%2e%2e%2fsecret.jpg",
        "/image/%2E%2E/secret.jpg",
        "/image//etc/passwd",
        "/image/%2Fetc%2Fpasswd",
        "/image/..%5Csecret.jpg",
        "/image/evil.jpg",
        "/image/not-in-gallery.jpg",
        "/image/",
        "/image/..",
        "/image/.",
    ],
)
def test_image_endpoint_serves_only_gallery_files(served, raw):
    server, *_ = served
    assert _raw_get(server, raw) in (403, 404)


def test_image_endpoint_serves_a_gallery_image(served):
    server, gallery, _ = served
    name = sorted(p.name for p in gallery.iterdir() if not p.is_symlink())[0]
    code, body = _get(server, "/image/" + name)
    assert code == 200 and body == (gallery / name).read_bytes()


def test_health(served):
    server, gallery, _ = served
    code, body = _get(server, "/health")
    # The symlink leading out of the gallery is not part of it (the data checks' rule): never embedded or ranked.
    readable = [p for p in gallery.iterdir() if not p.is_symlink()]
    assert code == 200 and json.loads(body)["gallery_size"] == len(readable)


@pytest.mark.parametrize("gallery", ["data_dir", "image_dir"])
def test_results_carry_the_titles_the_data_knows(tiny_model_dir, demo_dir, tmp_path, gallery):
    """Each result shows the titles the data pairs with its image: train.csv's for training
    images, the answered test queries' for test images; none for an image the data never names."""
    import pandas as pd

    from cnclip_lora.retrieve.arguments import ServeArguments
    from cnclip_lora.retrieve.serve import load_engine, result_json

    extra = {"image_dir": str(demo_dir / "image")} if gallery == "image_dir" else {}
    args = ServeArguments(
        model_name_or_path=str(tiny_model_dir), data_dir=str(demo_dir), cache_dir=str(tmp_path / "c"), **extra
    )
    engine = load_engine(args)
    expected: dict[str, list[str]] = {}
    train = pd.read_csv(demo_dir / "train.csv", sep="\t", dtype=str)
    for title, path in zip(train["title"], train["path"]):
        expected.setdefault(path, []).append(title)
    queries = pd.read_csv(demo_dir / "test_query.csv", dtype=str)["title"]
    answers = pd.read_csv(demo_dir / "test_answers.csv", dtype={"query": int, "path": str})
    for query, path in zip(answers["query"], answers["path"]):
        expected.setdefault(path, []).append(queries[query])
    result = engine.search(["连衣裙"], k=len(engine.names))[0]
    body = result_json(engine, result, len(engine.names))
    assert len(body["results"]) == len(engine.names)
    for item in body["results"]:
        assert item["titles"] == expected.get(item["path"], []), item["path"]
    assert any(item["titles"] for item in body["results"])
    if gallery == "image_dir":  # the whole folder: training images carry their train.csv titles
        assert {i["path"] for i in body["results"]} >= set(train["path"])


def test_micro_batcher_runs_simultaneous_requests_as_one_batch():
    calls: list[list[str]] = []

    def fn(queries: list[str], k: int) -> list:
        from cnclip_lora.retrieve.serve import QueryResult

        calls.append(list(queries))
        return [QueryResult(q, False, 1, list(range(k)), [1.0] * k) for q in queries]

    async def scenario():
        batcher = MicroBatcher(fn, max_batch=16, wait_ms=200)
        await batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit([f"q{i}"], k=1 + i % 3) for i in range(5)), batcher.submit(["a", "b"], k=2)
            )
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert calls == [["q0", "q1", "q2", "q3", "q4", "a", "b"]]  # one forward pass
    assert [[r.query for r in res] for res in results] == [["q0"], ["q1"], ["q2"], ["q3"], ["q4"], ["a", "b"]]
    assert [len(res[0].indices) for res in results] == [1, 2, 3, 1, 2, 2]  # each request keeps its own k


# ---------------------------------------------------------------------------------- real browser


def test_search_page_reads_and_writes_its_address(served):
    """A search is a link: ``/?q=...&k=...`` runs it on load, and a search typed in writes its address."""
    from urllib.parse import parse_qs, quote, urlparse

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, *_ = served
    driver = chromium_driver()
    try:
        query = "红色 连衣裙&秋装"  # a space and an ampersand must survive the round trip
        driver.get(f"{server.url}/?q={quote(query)}&k=3")
        WebDriverWait(driver, 120).until(lambda d: d.find_element(By.ID, "status").get_attribute("data-done") == "1")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#grid .card")) == 3
        assert driver.find_element(By.ID, "q").get_attribute("value") == query
        box = driver.find_element(By.ID, "q")
        box.clear()
        box.send_keys("牛仔裤")
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 120).until(
            lambda d: "牛仔裤" in parse_qs(urlparse(d.current_url).query).get("q", [""])[0]
        )
        assert parse_qs(urlparse(driver.current_url).query)["k"] == ["3"]
    finally:
        driver.quit()


def test_search_page_in_chromium(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, *_ = served
    driver = chromium_driver()
    try:
        driver.get(server.url + "/")
        box = driver.find_element(By.ID, "q")
        box.send_keys("云思木想2019秋装新款长袖T恤女")
        driver.find_element(By.ID, "k").clear()
        driver.find_element(By.ID, "k").send_keys("8")
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 120).until(lambda d: d.find_element(By.ID, "status").get_attribute("data-done") == "1")
        # Wait until every image finished (loaded or failed), then require that all loaded: a broken
        # image fails here with its URL instead of as a timeout.
        WebDriverWait(driver, 120).until(
            lambda d: d.execute_script("return [...document.querySelectorAll('#grid img')].every(i => i.complete)")
        )
        broken = driver.execute_script(
            "return [...document.querySelectorAll('#grid img')].filter(i => !(i.naturalWidth > 0)).map(i => i.src)"
        )
        assert broken == [], broken
        cards = driver.find_elements(By.CSS_SELECTOR, "#grid .card")
        assert len(cards) == 8
        scores = [float(c.find_element(By.CLASS_NAME, "score").text) for c in cards]
        assert scores == sorted(scores, reverse=True)
        assert driver.execute_script("return document.querySelector('#grid img').getBoundingClientRect().width") > 50
        shot = save_screenshot(driver, Path(SHOTS or tmp_path) / "serve_page.png")
        assert shot.stat().st_size < 150_000
    finally:
        driver.quit()


def test_report_in_chromium(tiny_model_dir, demo_dir, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed: pip install 'cnclip-lora[report]'")
    from cnclip_lora.commands import main

    adapter = make_random_adapter(tiny_model_dir, tmp_path / "adapter")
    out = tmp_path / "report.html"
    assert (
        main(
            [
                "report",
                "--page_size",
                "2",
                "--model_name_or_path",
                str(tiny_model_dir),
                "--data_dir",
                str(demo_dir),
                "--device",
                "cpu",
                "--adapter",
                str(adapter),
                "--compare_base",
                "--output",
                str(out),
                "--cache_dir",
                "",
            ]
        )
        == 0
    )
    moved = tmp_path / "elsewhere" / "r.html"  # self-contained: opens from any folder
    moved.parent.mkdir()
    shutil.move(out, moved)
    driver = chromium_driver()
    try:
        driver.get(moved.as_uri())
        # Every image on a shown page is loaded; hidden pages wait until they are opened.
        visible = (
            "const imgs=[...document.querySelectorAll('img')].filter(i => i.offsetParent !== null);"
            "return [imgs.length, imgs.filter(i => i.complete && i.naturalWidth > 0).length]"
        )
        loaded = driver.execute_script(visible)
        assert loaded[0] > 10 and loaded[0] == loaded[1]
        # Both splits of the demo data (it has test answers), each with its metrics.
        assert re.search(r"t2i R@1", driver.find_element("id", "val-metrics").text)
        assert re.search(r"t2i R@1", driver.find_element("id", "test-metrics").text)
        # The true image's frame is drawn: a green border on every marked candidate.
        colors = driver.execute_script(
            "return [...document.querySelectorAll('figure.true img')].map(i => getComputedStyle(i).borderTopColor)"
        )
        assert colors and set(colors) == {"rgb(26, 156, 58)"}
        assert driver.execute_script("return document.getElementById('curves').naturalWidth") > 100
        # Paging: the held-out split's queries are in pages of 2; "next" shows the second.
        pages = "#val-worst + .pages"
        shown_queries = f"return [...document.querySelectorAll('{pages} > .page')].map(p => !p.hidden)"
        n = driver.execute_script(f"return document.querySelectorAll('{pages} .query').length")
        count = -(-n // 2)
        assert count >= 3 and driver.execute_script(shown_queries) == [True] + [False] * (count - 1)
        driver.find_element("css selector", f"{pages} .pager .next").click()
        assert driver.execute_script(shown_queries) == [False, True] + [False] * (count - 2)
        assert f"page 2 of {count}" in driver.find_element("css selector", f"{pages} .pager").text
        loaded = driver.execute_script(visible)
        assert loaded[0] > 10 and loaded[0] == loaded[1]
        # A summary link into a hidden page opens that page at the query.
        last = driver.execute_script(f"return document.querySelector('{pages} > .page:last-child .query').id")
        driver.execute_script(f"location.hash = '#{last}'")
        assert driver.execute_script(shown_queries) == [False] * (count - 1) + [True]
        for _ in range(count - 1):
            driver.find_element("css selector", f"{pages} .pager .prev").click()
        assert driver.execute_script(shown_queries)[0] is True
        # Click to enlarge: the overlay shows the thumbnail at its stored (twice the shown) size.
        thumb = driver.find_element("css selector", f"{pages} > .page:first-of-type .query img.thumb")
        shown = driver.execute_script("return arguments[0].getBoundingClientRect().width", thumb)
        thumb.click()
        big = driver.execute_script(
            "const z = document.getElementById('zoom'); const i = z.querySelector('img');"
            "return [z.hidden, i ? i.getBoundingClientRect().width : 0]"
        )
        assert big[0] is False and big[1] > 1.5 * shown, (big, shown)
        driver.find_element("css selector", "#zoom img").click()
        assert driver.execute_script("return document.getElementById('zoom').hidden") is True
        # The fixed/broken sections start collapsed: the page is the summary, metrics and the worst-first list.
        assert driver.execute_script("return [...document.querySelectorAll('details')].every(d => !d.open)")
        driver.execute_script("window.scrollTo(0, 0)")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        assert height < 25 * 600, height  # two splits of pages, not every query at once
        shot = save_screenshot(driver, Path(SHOTS or tmp_path) / "report.png")
        assert shot.stat().st_size < 150_000
    finally:
        driver.quit()


def test_the_readme_curl_examples_work_as_written(served):
    """Each ``curl`` line of the README and the docs, pointed at this server's port, answers 200 with results."""
    import re
    import shlex
    import subprocess

    server, *_ = served
    root = Path(__file__).resolve().parents[2]
    text = "".join(p.read_text(encoding="utf-8") for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line for block in blocks for line in block.splitlines() if line.startswith("curl ")]
    assert len(lines) >= 2
    port = server.url.rsplit(":", 1)[1]
    for line in lines:
        argv = shlex.split(line.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
        proc = subprocess.run([*argv, "--silent", "--show-error", "--fail"], capture_output=True, timeout=120)
        assert proc.returncode == 0, (line, proc.stderr.decode()[-500:])
        body = json.loads(proc.stdout)
        assert body["results"], line
