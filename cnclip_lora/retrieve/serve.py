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
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnclip_lora.errors import CnClipLoraError, ConfigError
from cnclip_lora.inputs.images import IMAGE_EXTENSIONS
from cnclip_lora.retrieve.arguments import ServeArguments

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
    if refused:
        logger.warning(
            "--image_dir %s: %d entries are not served: %s",
            image_dir,
            len(refused),
            "; ".join(f"{name} {why}" for name, (_, why) in sorted(refused.items())[:5]),
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

    def __init__(self, model: Any, gallery: np.ndarray, names: Sequence[str], image_dir: str | os.PathLike) -> None:
        self.model = model
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
            except Exception as err:  # a failed batch fails its requests, never the batcher
                for _, _, fut in items:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            self.batches = (self.batches + [len(flat)])[-100:]
            start = 0
            for queries, k_i, fut in items:
                part = results[start : start + len(queries)]
                start += len(queries)
                if not fut.done():
                    fut.set_result([_cut(r, k_i) for r in part])


def _cut(result: QueryResult, k: int) -> QueryResult:
    return QueryResult(result.query, result.truncated, result.tokens, result.indices[:k], result.scores[:k])


def load_engine(args: ServeArguments) -> SearchEngine:
    """Load the model once and embed the gallery through retrieve's embedding cache."""
    from cnclip_lora.retrieve.run import check_sources, open_model

    check_sources(args)
    if args.image_dir:
        image_dir = Path(args.image_dir)
        names = gallery_from_folder(image_dir)
    else:
        from cnclip_lora.data import load_competition_data

        data = load_competition_data(args.data_dir, val_size=0, skip_bad_rows=True, require_queries=False)
        image_dir, names = Path(data.image_dir), list(data.gallery["path"])
        if not names:
            raise CnClipLoraError(f"{image_dir}: the gallery is empty (every image is named in train.csv).")
    model = open_model(args)
    gallery = model.encode_images([str(image_dir / n) for n in names])
    return SearchEngine(model, gallery, names, image_dir)


def _safe_image_path(engine: SearchEngine, name: str) -> Path | None:
    """The file for a gallery name, or ``None``: only names in the gallery list are served, and
    only when the resolved file (symlinks followed) is inside the gallery folder."""
    if name not in engine.by_name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    path = (engine.image_dir / name).resolve()
    if path.parent != engine.image_dir or not path.is_file():
        return None
    return path


def create_app(
    engine: SearchEngine,
    *,
    max_k: int = 100,
    max_batch: int = 64,
    batch_wait_ms: float = 5.0,
    info: dict[str, Any] | None = None,
):
    """The FastAPI application over a loaded :class:`SearchEngine`."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    batcher = MicroBatcher(engine.search, max_batch=max_batch, wait_ms=batch_wait_ms)

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="cnclip-lora search", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse(status_code=422, content={"detail": f"malformed request: {problems}"})

    def _check(queries: list[str], k: int) -> list[str]:
        if not 1 <= k <= max_k:
            raise HTTPException(400, f"k must be between 1 and {max_k}; got {k}.")
        if not queries:
            raise HTTPException(400, "no queries given.")
        if len(queries) > max_batch:
            raise HTTPException(413, f"at most {max_batch} queries per request; got {len(queries)}.")
        for i, q in enumerate(queries):
            if not q.strip():
                raise HTTPException(400, f"query {i} is empty.")
        return queries

    def _json(r: QueryResult, k: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "query": r.query,
            "k": k,
            "truncated": r.truncated,
            "tokens": r.tokens,
            "max_length": engine.max_length,
            "results": [
                {"path": engine.names[i], "score": s, "url": f"/image/{engine.names[i]}"}
                for i, s in zip(r.indices, r.scores)
            ],
        }
        if r.truncated:
            out["note"] = (
                f"the query has {r.tokens} tokens; only the first {engine.max_length} (with [CLS]/[SEP]) were used."
            )
        return out

    @app.get("/search")
    async def search_get(q: str = "", k: int = 10):
        if not q.strip():
            raise HTTPException(400, "q is empty: pass the query text as ?q=...")
        queries = _check([q], k)
        (result,) = await batcher.submit(queries, k)
        return _json(result, k)

    @app.post("/search")
    async def search_post(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, 'the body must be JSON: {"queries": ["..."], "k": 10}.') from None
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
async function search(q, k) {
  status.textContent = 'searching...'; status.className = ''; delete status.dataset.done;
  const resp = await fetch('/search?' + new URLSearchParams({q, k}));
  const body = await resp.json();
  grid.replaceChildren();
  if (!resp.ok) { status.textContent = body.detail; status.className = 'warn'; status.dataset.done = '1'; return; }
  status.textContent = body.results.length + ' results' + (body.truncated ? ' (' + body.note + ')' : '');
  if (body.truncated) status.className = 'warn';
  for (const r of body.results) {
    const card = document.createElement('div'); card.className = 'card';
    const img = document.createElement('img'); img.src = r.url; img.alt = r.path;
    const cap = document.createElement('div'); cap.className = 'score'; cap.textContent = r.score.toFixed(3);
    const name = document.createElement('div'); name.textContent = r.path;
    card.append(img, cap, name); grid.append(card);
  }
  status.dataset.done = '1';
}
form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const q = document.getElementById('q').value, k = document.getElementById('k').value;
  // The address holds the search, so it can be linked, bookmarked and reloaded.
  history.replaceState(null, '', '?' + new URLSearchParams({q, k}));
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


def serve(args: ServeArguments) -> None:
    """Load everything, then serve until interrupted."""
    import uvicorn

    engine = load_engine(args)
    info = {"model": args.model_name_or_path, "adapter": args.adapter}
    app = create_app(engine, max_k=args.max_k, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, info=info)
    print(f"serving {len(engine.names)} images on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
