"""``cnclip-lora serve``: a local text-to-image search service over a gallery folder.

The model (with its adapter merged) is loaded once; the gallery is embedded through the same
cache as ``retrieve``, so a warm cache starts the service in seconds. Queries that arrive
together are embedded as one batch: a single worker collects requests for a few milliseconds
(:class:`MicroBatcher`) and runs one forward pass for all of them.

    GET  /search?q=...&k=10          -> {"query", "truncated", "tokens", "results": [{path, score, url}]}
    POST /search {"queries": [...], "k": 10}  -> {"results": [one object as above per query]}
    GET  /image/<name>                -> a gallery image (only names in the gallery)
    GET  /health                      -> {"status": "ok", "gallery_size", ...}
    GET  /                            -> a search page

Built on FastAPI + uvicorn (``pip install 'cnclip-lora[serve]'``); binds 127.0.0.1 by default.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at run time.

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnclip_lora.errors import CnClipLoraError, ConfigError
from cnclip_lora.inputs.images import IMAGE_EXTENSIONS
from cnclip_lora.retrieve.arguments import LOOPBACK_NAMES, ServeArguments

__all__ = [
    "ServeArguments",
    "SearchEngine",
    "MicroBatcher",
    "load_engine",
    "create_app",
    "serve",
    "gallery_from_folder",
]

logger = logging.getLogger(__name__)


def gallery_from_folder(image_dir: str | os.PathLike) -> list[str]:
    """Names of the image files directly inside ``image_dir`` (sorted)."""
    folder = Path(image_dir)
    if not folder.is_dir():
        raise ConfigError(f"--image_dir {image_dir}: not a folder.")
    from cnclip_lora.data.checks import readable_image_files

    # The data checks' rule: regular files only, no link leading out of the folder, every Pillow format.
    usable, refused = readable_image_files(folder)
    names = [n for n in usable if "/" not in n and n.lower().endswith(IMAGE_EXTENSIONS)]
    # Every image decoded once, as check-data does: one that cannot be read (corrupt, over the
    # pixel limit) is left out with a note, before any model work, as in every other verb.
    from cnclip_lora.inputs.images import decode_errors

    bad = {n: why for n, why in decode_errors(folder, names, None).items() if why}
    names = [n for n in names if n not in bad]
    left_out = [f"{name} {why}" for name, (_, why) in sorted(refused.items())]
    left_out += [f"{name} cannot be read ({why})" for name, why in sorted(bad.items())]
    if left_out:
        logger.warning(
            "--image_dir %s: %d entries are not served: %s%s",
            image_dir,
            len(left_out),
            "; ".join(left_out[:5]),
            " ..." if len(left_out) > 5 else "",
        )
    if not names:
        raise CnClipLoraError(f"--image_dir {image_dir}: no readable image files.")
    return names


@dataclass
class QueryResult:
    query: str
    truncated: bool
    tokens: int
    indices: list[int]
    scores: list[float]


class SearchEngine:
    """A :class:`~cnclip_lora.inference.model.RetrievalModel`, the gallery's embeddings, and one call
    that searches many queries; queries are embedded exactly as ``retrieve`` embeds titles."""

    def __init__(
        self,
        model: Any,
        gallery: np.ndarray,
        names: Sequence[str],
        image_dir: str | os.PathLike,
        titles: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.model = model
        #: What the data says about each gallery image (its titles), shown with the results.
        self.titles = {n: list(titles[n]) for n in names if n in titles} if titles else {}
        self.max_length = model.max_length
        self.gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        self.names = list(names)
        self.image_dir = Path(image_dir).resolve()
        self.by_name = {n: i for i, n in enumerate(self.names)}

    def search(self, queries: Sequence[str], k: int) -> list[QueryResult]:
        """Embed all ``queries`` in one forward pass and rank the gallery; k is capped at its size."""
        from cnclip_lora.inference.search import rank

        embeds = self.model.encode_texts(list(queries), batch_size=max(1, len(queries)), cache=False)
        scores, indices = rank(embeds, self.gallery, k=min(k, len(self.names)))
        out = []
        for q, n in enumerate(self.model.count_tokens(list(queries))):
            keep = indices[q] >= 0
            out.append(
                QueryResult(
                    queries[q],
                    n > self.max_length,
                    n,
                    [int(i) for i in indices[q][keep]],
                    [round(float(s), 6) for s in scores[q][keep]],
                )
            )
        return out


class MicroBatcher:
    """Collects concurrent requests for up to ``wait_ms`` (or ``max_batch`` queries) and runs them
    as one call of ``fn(queries, k)`` in a single worker thread, so the model sees one batch and
    the event loop stays free."""

    def __init__(
        self, fn: Callable[[list[str], int], list[Any]], *, max_batch: int = 64, wait_ms: float = 5.0
    ) -> None:
        self.fn, self.max_batch, self.wait = fn, max_batch, wait_ms / 1000.0
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnclip-serve")
        self.batches: list[int] = []  # queries per forward pass (recent), for /health

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, queries: list[str], k: int) -> list[Any]:
        assert self.queue is not None, "MicroBatcher.start() was not awaited"
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((queries, k, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            n = len(items[0][0])
            deadline = loop.time() + self.wait
            while n < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                items.append(item)
                n += len(item[0])
            flat = [q for queries, _, _ in items for q in queries]
            k = max(item[1] for item in items)
            try:
                results = await loop.run_in_executor(self.pool, self.fn, flat, k)
            except Exception:  # one request's failure must not fail the others: each runs on its own
                await self._one_by_one(items)
                continue
            self.batches = (self.batches + [len(flat)])[-100:]
            start = 0
            for queries, k_i, fut in items:
                part = results[start : start + len(queries)]
                start += len(queries)
                if not fut.done():
                    fut.set_result([_cut(r, k_i) for r in part])

    async def _one_by_one(self, items: list[tuple[list[str], int, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        for queries, k_i, fut in items:
            try:
                part = await loop.run_in_executor(self.pool, self.fn, queries, k_i)
            except Exception as err:  # noqa: BLE001 - handed to that request alone
                if not fut.done():
                    fut.set_exception(err)
                continue
            if not fut.done():
                fut.set_result([_cut(r, k_i) for r in part])


def _cut(result: QueryResult, k: int) -> QueryResult:
    return QueryResult(result.query, result.truncated, result.tokens, result.indices[:k], result.scores[:k])


def load_engine(args: ServeArguments) -> SearchEngine:
    """Load the model once and embed the gallery through retrieve's embedding cache."""
    from cnclip_lora.retrieve.run import open_model

    args.check_sources()
    titles: dict[str, list[str]] = {}
    if args.image_dir:
        image_dir = Path(args.image_dir)
        names = gallery_from_folder(image_dir)
        labelled = Path(args.data_dir) / "train.csv"
        if labelled.is_file() and (Path(args.data_dir) / "image").resolve() == image_dir.resolve():
            # The folder is the data's own image folder: its titles are known.
            titles = _served_data(args).titles_by_image()
    else:
        data = _served_data(args)
        data.warn_left_out()
        image_dir, names = Path(data.image_dir), list(data.gallery["path"])
        titles = data.titles_by_image()
        parents = {Path(n).parent for n in names}
        if len(parents) == 1 and (folder := parents.pop()) != Path("."):
            # One sub-folder (a tsv's images in the images cache): serve it, by plain file names.
            image_dir = image_dir / folder
            titles = {Path(k).name: v for k, v in titles.items() if Path(k).parent == folder}
            names = [Path(n).name for n in names]
        if not names:
            raise CnClipLoraError(f"{image_dir}: the gallery is empty (every image is named in train.csv).")
    model = open_model(args)
    gallery = model.encode_images([str(image_dir / n) for n in names])
    return SearchEngine(model, gallery, names, image_dir, titles)


def _served_data(args: ServeArguments) -> Any:
    """The data folder as the service uses it: bad training rows and images left out (and said);
    the answers file only for the titles it gives the test images, so a problem in it costs those
    titles, with a warning, not the service."""
    from cnclip_lora.data import load_competition_data
    from cnclip_lora.data.dataset import answers_problem
    from cnclip_lora.data.hf_source import dataset_source
    from cnclip_lora.errors import DataError

    data_dir = args.data_dir
    common = dict(val_size=0, skip_bad_rows=True, require_queries=False, dataset=dataset_source(args))
    try:
        return load_competition_data(data_dir, **common)
    except DataError as err:
        if (problem := answers_problem(err)) is None:
            raise
        logger.warning("the answers file is not used (%s); its titles are not shown", problem)
        return load_competition_data(data_dir, **common, use_answers=False)


def _safe_image_path(engine: SearchEngine, name: str) -> Path | None:
    """The file for a gallery name, or ``None``: only names in the gallery list are served, and
    only when the resolved file (symlinks followed) is inside the gallery folder."""
    if name not in engine.by_name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    path = (engine.image_dir / name).resolve()
    if path.parent != engine.image_dir or not path.is_file():
        return None
    return path


def check_queries(queries: list[str], k: int, *, max_k: int, max_batch: int, max_query_chars: int) -> list[str]:
    """The request's queries, or an ``HTTPException`` naming the limit or the bad query (before the model)."""
    from fastapi import HTTPException

    from cnclip_lora.data.checks import normalize_title

    if not 1 <= k <= max_k:
        raise HTTPException(400, f"k must be between 1 and {max_k}; got {k}.")
    if not queries:
        raise HTTPException(400, "no queries given.")
    if len(queries) > max_batch:
        raise HTTPException(413, f"at most {max_batch} queries per request; got {len(queries)}.")
    for i, q in enumerate(queries):
        name = "the query" if len(queries) == 1 else f"query {i}"
        if len(q) > max_query_chars:
            raise HTTPException(413, f"{name} has {len(q)} characters; at most {max_query_chars} are accepted.")
        try:
            q.encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPException(400, f"{name} is not valid text (a lone surrogate code point).") from None
        if not normalize_title(q):  # the data checks' rule for a blank title
            raise HTTPException(
                400, f"{name} is empty or has no visible characters (only spaces or control or zero-width ones)."
            )
    return queries


def result_json(engine: SearchEngine, r: QueryResult, k: int) -> dict[str, Any]:
    """One query's answer as the API returns it."""
    out: dict[str, Any] = {
        "query": r.query,
        "k": k,
        "truncated": r.truncated,
        "tokens": r.tokens,
        "max_length": engine.max_length,
        "results": [
            {
                "path": engine.names[i],
                "score": s,
                "url": f"/image/{engine.names[i]}",
                "titles": engine.titles.get(engine.names[i], []),
            }
            for i, s in zip(r.indices, r.scores)
        ],
    }
    if r.truncated:
        out["note"] = (
            f"the query has {r.tokens} tokens; only the first {engine.max_length} (with [CLS]/[SEP]) were used."
        )
    return out


async def read_json_body(request: Any, max_body_bytes: int) -> Any:
    """The JSON body, read no further than ``max_body_bytes``; 413 beyond it, 400 when it is not JSON."""
    from fastapi import HTTPException

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise HTTPException(413, f"the body has {declared} bytes; at most {max_body_bytes} are accepted.")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_body_bytes:
            raise HTTPException(413, f"the body is over {max_body_bytes} bytes, the most accepted.")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's parser goes
        raise HTTPException(400, 'the body must be JSON: {"queries": ["..."], "k": 10}.') from None
    return body


def create_app(
    engine: SearchEngine,
    *,
    max_k: int = 100,
    max_batch: int = 64,
    batch_wait_ms: float = 5.0,
    info: dict[str, Any] | None = None,
    hosts: Sequence[str] = LOOPBACK_NAMES,
    api_key: str | None = None,
    max_query_chars: int = 1000,
    max_body_bytes: int = 1 << 20,
):
    """The FastAPI application over a loaded :class:`SearchEngine`.

    Only requests whose ``Host`` is one of ``hosts`` are answered (a page on another site that
    reaches the loopback service through DNS rebinding gets 400), with ``api_key`` every request
    must carry it (``X-API-Key`` or ``?key=``), and every input is bounded and checked before it
    reaches the model, so one bad request can never fail another in its batch.
    """
    import hmac
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    batcher = MicroBatcher(engine.search, max_batch=max_batch, wait_ms=batch_wait_ms)

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="cnclip-lora search", lifespan=lifespan)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))

    if api_key:

        @app.middleware("http")
        async def _require_key(request: Request, call_next):
            if request.url.path in ("/", "/health"):  # the page holds no data; health only the gallery size
                return await call_next(request)
            given = request.headers.get("x-api-key") or request.query_params.get("key") or ""
            if not hmac.compare_digest(given.encode("utf-8", "replace"), api_key.encode("utf-8")):
                return JSONResponse(status_code=401, content={"detail": "missing or wrong API key (X-API-Key)."})
            return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse(status_code=422, content={"detail": f"malformed request: {problems}"})

    def _check(queries: list[str], k: int) -> list[str]:
        return check_queries(queries, k, max_k=max_k, max_batch=max_batch, max_query_chars=max_query_chars)

    def _json(r: QueryResult, k: int) -> dict[str, Any]:
        return result_json(engine, r, k)

    @app.get("/search")
    async def search_get(q: str = "", k: int = 10):
        if not q.strip():
            raise HTTPException(400, "q is empty: pass the query text as ?q=...")
        queries = _check([q], k)
        (result,) = await batcher.submit(queries, k)
        return _json(result, k)

    @app.post("/search")
    async def search_post(request: Request):
        body = await read_json_body(request, max_body_bytes)
        if not isinstance(body, dict) or not isinstance(body.get("queries"), list):
            raise HTTPException(
                400, 'the body must be a JSON object with a list "queries": {"queries": ["..."], "k": 10}.'
            )
        queries, k = body["queries"], body.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, int):
            raise HTTPException(400, f"k must be an integer; got {k!r}.")
        bad = [i for i, q in enumerate(queries) if not isinstance(q, str)]
        if bad:
            raise HTTPException(400, f"queries must be strings; item {bad[0]} is {type(queries[bad[0]]).__name__}.")
        queries = _check(queries, k)
        results = await batcher.submit(queries, k)
        return {"results": [_json(r, k) for r in results]}

    @app.get("/image/{name:path}")
    async def image(name: str):
        path = _safe_image_path(engine, name)
        if path is None:
            raise HTTPException(404, f"{name!r} is not an image of this gallery.")
        return FileResponse(path)

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "gallery_size": len(engine.names),
            "max_length": engine.max_length,
            "recent_batches": batcher.batches[-10:],
            **(info or {}),
        }

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return _PAGE.replace("__MAX_K__", str(max_k))

    return app


_PAGE = """<!DOCTYPE html>
<html lang="zh"><head><meta charset="utf-8"><title>cnclip-lora search</title>
<style>
body{font-family:system-ui,'Noto Sans CJK SC',sans-serif;margin:1.5em;color:#222}
form{display:flex;gap:8px;margin-bottom:1em}
#q{flex:1;font-size:16px;padding:6px}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:10px}
.card{border:1px solid #ddd;border-radius:6px;padding:6px;text-align:center;font-size:12px}
.card img{width:128px;height:128px;object-fit:contain;display:block;margin:0 auto 4px}
#status{color:#555;margin-bottom:.5em}
.known{color:#555;font-size:11px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.warn{color:#b35c00}
</style></head><body>
<h1>cnclip-lora search</h1>
<form id="form"><input id="q" name="q" placeholder="输入商品标题，例如：2019秋装新款长袖T恤女" autofocus>
<input id="k" name="k" type="number" min="1" max="__MAX_K__" value="12" style="width:5em">
<button id="go" type="submit">Search</button></form>
<div id="status"></div><div id="grid"></div>
<script>
const form = document.getElementById('form'), grid = document.getElementById('grid'),
      status = document.getElementById('status');
const apiKey = new URLSearchParams(location.search).get('key');  // with `serve --api_key`
const withKey = (params) => apiKey ? {...params, key: apiKey} : params;
async function search(q, k) {
  status.textContent = 'searching...'; status.className = ''; delete status.dataset.done;
  const resp = await fetch('/search?' + new URLSearchParams(withKey({q, k})));
  const body = await resp.json();
  grid.replaceChildren();
  if (!resp.ok) { status.textContent = body.detail; status.className = 'warn'; status.dataset.done = '1'; return; }
  status.textContent = body.results.length + ' results' + (body.truncated ? ' (' + body.note + ')' : '');
  if (body.truncated) status.className = 'warn';
  for (const r of body.results) {
    const card = document.createElement('div'); card.className = 'card';
    const img = document.createElement('img'); img.alt = r.path;
    img.src = apiKey ? r.url + '?' + new URLSearchParams({key: apiKey}) : r.url;
    const cap = document.createElement('div'); cap.className = 'score'; cap.textContent = r.score.toFixed(3);
    const name = document.createElement('div'); name.textContent = r.path;
    card.append(img, cap, name);
    if (r.titles.length) {  // what the data says about this image
      const known = document.createElement('div'); known.className = 'known';
      known.textContent = r.titles[0]; known.title = r.titles.join(' / '); card.append(known);
    }
    grid.append(card);
  }
  status.dataset.done = '1';
}
form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const q = document.getElementById('q').value, k = document.getElementById('k').value;
  // The address holds the search, so it can be linked, bookmarked and reloaded.
  history.replaceState(null, '', '?' + new URLSearchParams(withKey({q, k})));
  search(q, k);
});
const given = new URLSearchParams(location.search);
if (given.get('k')) document.getElementById('k').value = given.get('k');
if (given.get('q')) {
  document.getElementById('q').value = given.get('q');
  search(given.get('q'), document.getElementById('k').value);
}
</script></body></html>
"""


def _public_name(source: str | None) -> str | None:
    """A model or adapter as ``/health`` shows it: a Hub id as is, a local folder by its name only."""
    if source is None:
        return None
    return Path(source).name if Path(source).exists() else source


def bind_socket(host: str, port: int):
    """A socket bound to ``host:port``, or one line naming the option that cannot work (before any model work)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ConfigError(f"--host {host}: not an address of this machine ({err.strerror}).") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
            raise ConfigError(f"--port {port}: already in use on {host}; choose another --port.") from None
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({err.strerror}).") from None
    return sock


def serve(args: ServeArguments) -> None:
    """Bind the socket, load everything, then serve until interrupted."""
    import uvicorn

    sock = bind_socket(args.host, args.port)  # a bad host or a busy port fails before the model loads
    try:
        engine = load_engine(args)
        info = {"model": _public_name(args.model_name_or_path), "adapter": _public_name(args.adapter)}
        app = create_app(
            engine,
            max_k=args.max_k,
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            info=info,
            hosts=args.hosts,
            api_key=args.api_key,
            max_query_chars=args.max_query_chars,
            max_body_bytes=args.max_body_bytes,
        )
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        sock.listen(128)
        print(f"serving {len(engine.names)} images on http://{args.host}:{args.port}/", flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
