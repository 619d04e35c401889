"""Load on `cnclip-lora serve`, loopback only: a fixed number of GET /search requests from a few
concurrent clients; queries per second and p50/p99 latency.

    PYTHONPATH=$PWD python benchmarks/serve_load.py --requests 400 --clients 4

Builds the tiny model and the synthetic data in a temporary folder, starts the server in a
subprocess on a free 127.0.0.1 port, warms it, then runs the clients (threads, keep-alive
connections). Prints one JSON line and a Markdown row for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info  # noqa: E402
from serve_utils import start_server  # noqa: E402


def _client(port: int, queries: list[str], k: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    out = []
    for q in queries:
        t0 = time.perf_counter()
        conn.request("GET", "/search?" + urllib.parse.urlencode({"q": q, "k": k}))
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {body[:200]!r}")
        out.append(time.perf_counter() - t0)
    conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch_wait_ms", type=float, default=5.0)
    args = parser.parse_args()

    from cnclip_lora.demo.data import make_demo_data
    from cnclip_lora.demo.tiny_model import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_tiny_model(tmp / "tiny", seed=0)
        make_demo_data(tmp / "xf", seed=0)
        server = start_server(
            tmp,
            [
                "--model_name_or_path",
                str(tmp / "tiny"),
                "--data_dir",
                str(tmp / "xf"),
                "--batch_wait_ms",
                str(args.batch_wait_ms),
                "--cache_dir",
                str(tmp / "cache"),
            ],
        )
        try:
            gallery = json.loads(http_get(server.port, "/health"))["gallery_size"]
            queries = [f"云思木想2019秋装新款{i}号高领弹力修身长袖T恤女" for i in range(args.requests)]
            _client(server.port, queries[:20], args.k)  # warm-up
            per_client = [queries[i :: args.clients] for i in range(args.clients)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                lat = [x for part in pool.map(lambda qs: _client(server.port, qs, args.k), per_client) for x in part]
            wall = time.perf_counter() - t0
            batches = json.loads(http_get(server.port, "/health"))["recent_batches"]
        finally:
            server.stop()
    lat_ms = sorted(x * 1000 for x in lat)
    result = {
        "requests": len(lat_ms),
        "clients": args.clients,
        "k": args.k,
        "gallery": gallery,
        "batch_wait_ms": args.batch_wait_ms,
        "qps": round(len(lat_ms) / wall, 1),
        "p50_ms": round(statistics.median(lat_ms), 1),
        "p99_ms": round(lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))], 1),
        "recent_batch_sizes": batches,
        "machine": machine_info(),
    }
    print(json.dumps(result, ensure_ascii=False))
    print(
        f"| {result['requests']} | {result['clients']} | {gallery} | {args.batch_wait_ms} | {result['qps']} | "
        f"{result['p50_ms']} | {result['p99_ms']} |"
    )


def http_get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    body = conn.getresponse().read()
    conn.close()
    return body


if __name__ == "__main__":
    main()
