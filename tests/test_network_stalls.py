"""A Hub endpoint that accepts connections and never answers: every network call is bounded and
the one-line error names the endpoint and the setting, instead of waiting forever."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from serve_utils import make_random_adapter


@pytest.fixture(scope="module")
def stalled_endpoint():
    """``http://127.0.0.1:PORT``: accepts every connection, reads nothing, answers nothing."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


def _run(endpoint: str, *argv: str, tmp_path) -> tuple[subprocess.CompletedProcess, float]:
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_DOWNLOAD_TIMEOUT": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf"),  # an empty Hub cache: nothing can be served from it
        "HF_TOKEN": "hf_fake",
    }
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cnclip_lora", *argv], capture_output=True, text=True, env=env, timeout=180
    )
    return proc, time.monotonic() - start


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cnclip-lora")]
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_a_hub_adapter_from_a_stalled_endpoint(stalled_endpoint, tiny_model_dir, demo_dir, tmp_path):
    proc, took = _run(
        stalled_endpoint, "evaluate", "--model_name_or_path", str(tiny_model_dir), "--adapter", "someone/adapter",
        "--data_dir", str(demo_dir), tmp_path=tmp_path,
    )  # fmt: skip
    line = _one_line(proc)
    assert stalled_endpoint in line and "HF_HUB_DOWNLOAD_TIMEOUT" in line and "someone/adapter" in line
    assert took < 60, took


def test_a_hub_base_model_from_a_stalled_endpoint(stalled_endpoint, demo_dir, tmp_path):
    proc, took = _run(
        stalled_endpoint, "retrieve", "--model_name_or_path", "someone/base", "--data_dir", str(demo_dir),
        "--output", str(tmp_path / "s.csv"), tmp_path=tmp_path,
    )  # fmt: skip
    line = _one_line(proc)
    assert stalled_endpoint in line and "someone/base" in line
    assert took < 60, took
    assert not (tmp_path / "s.csv").exists()


def test_a_push_to_a_stalled_endpoint(stalled_endpoint, tiny_model_dir, tmp_path):
    adapter = make_random_adapter(tiny_model_dir, tmp_path / "adapter")
    proc, took = _run(stalled_endpoint, "push", str(adapter), "--repo_id", "someone/out", tmp_path=tmp_path)
    line = _one_line(proc)
    assert stalled_endpoint in line and "HF_HUB_DOWNLOAD_TIMEOUT" in line
    assert took < 90, took
