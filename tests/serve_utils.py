"""Helpers for the report, serve and browser tests: a random adapter, a server subprocess, Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CNCLIP_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CNCLIP_CHROMEDRIVER", "/usr/bin/chromedriver")


def make_random_adapter(tiny_model_dir: Path, out: Path, seed: int = 0) -> Path:
    """A LoRA adapter with random (non-zero) B matrices: a model that differs from the base."""
    import torch
    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    from cnclip_lora.modeling import apply_lora

    model = apply_lora(ChineseCLIPModel.from_pretrained(tiny_model_dir), r=4, alpha=8)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    model.save_pretrained(out)
    ChineseCLIPProcessor.from_pretrained(tiny_model_dir).save_pretrained(out)
    history = [{"step": s, "loss": 3.0 / s, "t2i_acc": 0.1 * s, "epoch": s / 4} for s in range(1, 9)]
    history += [{"step": s, "eval_t2i_MR": 10.0 * s, "eval_t2i_R@1": 5.0 * s} for s in (4, 8)]
    (out / "trainer_state.json").write_text(json.dumps({"log_history": history}), encoding="utf-8")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class Server:
    """``cnclip-lora serve`` in a subprocess on a free loopback port; stopped by :meth:`stop`."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(env["CNCLIP_SERVE_LOG"])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cnclip_lora", "serve", *args, "--port", str(self.port), "--device", "cpu"],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        deadline = time.time() + 240
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if http("GET", self.url + "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server did not answer within 240 s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(tmp: Path, args: list[str]) -> Server:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        CNCLIP_SERVE_LOG=str(tmp / "serve.log"),
    )
    return Server(args, env)


def chromium_driver():
    """A headless Chromium driven by selenium, or a skip that says why there is none."""
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(
            f"Chromium not installed ({CHROMIUM}, {CHROMEDRIVER}); `make test` installs it with apt-get "
            "(Debian packages chromium, chromium-driver) where it can"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium not installed: pip install 'cnclip-lora[browser]'"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1100,900",
        "--hide-scrollbars",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def save_screenshot(driver, path: Path, max_bytes: int = 150_000) -> Path:
    """Screenshot as a palette PNG (small enough to commit)."""
    from io import BytesIO

    from PIL import Image

    im = Image.open(BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    for colors in (128, 64, 32):
        buf = BytesIO()
        im.quantize(colors=colors).save(buf, "PNG", optimize=True)
        if buf.tell() <= max_bytes:
            break
    path.write_bytes(buf.getvalue())
    return path


def copy_gallery(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(src / name, dst / name)
    return dst
