"""Atomic outputs: a crash mid-write never leaves a partial file at a final path.

Covers the helpers themselves and every writer that uses them: submission, top-k file,
adapter save (Trainer), and the embedding cache (datasets' own temp-file-and-move).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cnclip_lora.utils.files import atomic_path, atomic_write_text, default_file_mode, staged_dir


class Boom(RuntimeError):
    pass


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_path_crash_keeps_the_old_file_and_cleans_up(tmp_path):
    final = tmp_path / "submit.csv"
    final.write_text("old\n")
    with pytest.raises(Boom):
        with atomic_path(final) as tmp:
            tmp.write_text("half of the new conte")
            assert not final.read_text().startswith("half")  # nothing visible before the rename
            raise Boom
    assert final.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_atomic_path_crash_without_old_file_leaves_nothing(tmp_path):
    final = tmp_path / "sub" / "dir" / "topk.csv"
    with pytest.raises(Boom):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"partial")
            raise Boom
    assert not final.exists()
    assert _leftovers(final.parent) == []


def test_atomic_write_replaces_and_uses_umask_permissions(tmp_path):
    old_mask = os.umask(0o022)
    try:
        final = tmp_path / "a.json"
        atomic_write_text(final, "{}\n")
        assert final.read_text() == "{}\n"
        # mkstemp's 0600 would make a shared submission unreadable to others.
        assert stat.S_IMODE(final.stat().st_mode) == 0o644 == default_file_mode()
        os.umask(0o077)
        assert default_file_mode() == 0o600
        atomic_write_text(tmp_path / "b.json", "x")
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600
    finally:
        os.umask(old_mask)


def test_atomic_write_keeps_the_mode_of_the_replaced_file(tmp_path):
    final = tmp_path / "a.txt"
    final.write_text("old")
    final.chmod(0o640)
    atomic_write_text(final, "new")
    assert final.read_text() == "new"
    assert stat.S_IMODE(final.stat().st_mode) == 0o640


def test_staged_dir_moves_files_only_on_success(tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"old weights")
    (out / "keep.txt").write_text("untouched")
    with pytest.raises(Boom):
        with staged_dir(out) as staging:
            (staging / "adapter_model.safetensors").write_bytes(b"new wei")
            raise Boom
    assert (out / "adapter_model.safetensors").read_bytes() == b"old weights"
    assert sorted(p.name for p in out.iterdir()) == ["adapter_model.safetensors", "keep.txt"]

    with staged_dir(out) as staging:
        (staging / "adapter_model.safetensors").write_bytes(b"new weights")
        (staging / "nested").mkdir()
        (staging / "nested" / "x.json").write_text("{}")
    assert (out / "adapter_model.safetensors").read_bytes() == b"new weights"
    assert (out / "nested" / "x.json").read_text() == "{}"
    assert (out / "keep.txt").read_text() == "untouched"
    assert _leftovers(out) == []


def _crash_halfway_to_csv(monkeypatch):
    """Make DataFrame.to_csv write half of its output, then die."""
    real = pd.DataFrame.to_csv

    def half(self, path, *args, **kwargs):
        real(self.iloc[: max(1, len(self) // 2)], path, *args, **kwargs)
        raise Boom("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half)


def test_submission_and_topk_crash_leave_previous_files(tmp_path, monkeypatch):
    from cnclip_lora.retrieve.run import write_submission, write_topk

    sub, topk = tmp_path / "submit.csv", tmp_path / "topk.csv"
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]], dtype=np.float32)
    indices = np.array([[0, 1], [1, 0], [2, 1], [3, 2]])
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    write_submission(sub, None, ["q0", "q1", "q2", "q3"], names)
    write_topk(topk, scores, indices, names)
    before = sub.read_bytes(), topk.read_bytes()
    _crash_halfway_to_csv(monkeypatch)
    with pytest.raises(Boom):
        write_submission(sub, None, ["q0", "q1", "q2", "q3"], names[::-1])
    with pytest.raises(Boom):
        write_topk(topk, scores[::-1], indices, names)
    assert (sub.read_bytes(), topk.read_bytes()) == before
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    # ...and a first write that crashes leaves no file at all.
    _crash_halfway_to_csv(monkeypatch)
    with pytest.raises(Boom):
        write_submission(tmp_path / "new.csv", None, ["q0"], ["a.jpg"])
    assert not (tmp_path / "new.csv").exists()


def test_adapter_save_crash_keeps_the_previous_adapter(tiny_model_dir, tmp_path, monkeypatch):
    import peft.peft_model
    import torch
    from transformers import AutoProcessor, ChineseCLIPModel

    from cnclip_lora.config import CnClipTrainingArguments
    from cnclip_lora.modeling import apply_lora
    from cnclip_lora.training.trainer import CnClipLoraTrainer

    model = apply_lora(ChineseCLIPModel.from_pretrained(tiny_model_dir), r=2, alpha=4)
    args = CnClipTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    trainer = CnClipLoraTrainer(model=model, args=args, processing_class=AutoProcessor.from_pretrained(tiny_model_dir))
    trainer.save_model()
    out = tmp_path / "out"
    weights = out / "adapter_model.safetensors"
    old = weights.read_bytes()
    assert {"adapter_config.json", "cnclip_lora.json", "training_args.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "training_args.bin").exists()

    real = peft.peft_model.safe_save_file

    def die_mid_write(tensors, filename, *a, **k):
        real(tensors, filename, *a, **k)
        Path(filename).write_bytes(Path(filename).read_bytes()[:100])  # truncated, as by a kill
        raise Boom("killed while saving")

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(1.0)
    monkeypatch.setattr(peft.peft_model, "safe_save_file", die_mid_write)
    with pytest.raises(Boom):
        trainer.save_model()
    assert weights.read_bytes() == old
    assert _leftovers(out) == []
    monkeypatch.undo()
    trainer.save_model()
    assert weights.read_bytes() != old


def test_embedding_cache_is_never_left_partial(tiny_model_dir, demo_dir, tmp_path, monkeypatch):
    """datasets writes map caches to a temp file and moves it; a crash leaves no cache file."""
    from transformers import AutoProcessor, ChineseCLIPModel

    import cnclip_lora.inference.embed as embedding
    from cnclip_lora.adapter.record import Preprocessing

    prep = Preprocessing()
    model = ChineseCLIPModel.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    titles = [f"标题{i}号" for i in range(12)]
    cache = tmp_path / "cache"
    real = embedding.tokenize_titles
    calls = {"n": 0}

    def crash_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Boom("killed while embedding")
        return real(*args, **kwargs)

    monkeypatch.setattr(embedding, "tokenize_titles", crash_on_second_batch)
    with pytest.raises(Boom):
        embedding.embed_texts(
            model, tokenizer, titles, preprocessing=prep, batch_size=4, cache_dir=cache, fingerprint="f" * 32
        )
    assert not list(cache.glob("embed-*.arrow")), "a partial cache would be served as a hit next time"
    monkeypatch.undo()
    first = embedding.embed_texts(
        model, tokenizer, titles, preprocessing=prep, batch_size=4, cache_dir=cache, fingerprint="f" * 32
    )
    assert list(cache.glob("embed-*.arrow"))
    direct = embedding.embed_texts(model, tokenizer, titles, preprocessing=prep, batch_size=4)
    np.testing.assert_allclose(first, direct, atol=1e-6)


@pytest.mark.parametrize("suffix", [".bin", ".ckpt", ".pickle", ".pkl", ".pt", ".PTH"])
def test_base_checkpoints_and_adapters_refuse_the_same_pickle_formats(tmp_path, suffix):
    """One pickle policy: a folder whose only weights are pickled is refused as a base and as an adapter."""
    from cnclip_lora.adapter.hub import check_adapter_dir
    from cnclip_lora.errors import UnsafeArtifactError
    from cnclip_lora.modeling import load_model_and_processor

    (tmp_path / f"weights{suffix}").write_bytes(b"\x80\x04pickle")
    with pytest.raises(UnsafeArtifactError, match=f"weights\\{suffix}"):
        check_adapter_dir(tmp_path)
    with pytest.raises(UnsafeArtifactError, match=f"weights\\{suffix}"):
        load_model_and_processor(str(tmp_path))


def test_temp_files_of_a_killed_run_are_removed_by_the_next_write(tmp_path):
    """``.submit.csv.<pid>.XXXX.tmp`` of a process that no longer exists goes; a live process's stays."""
    import subprocess
    import sys

    from cnclip_lora.utils.files import atomic_write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    litter = tmp_path / f".submit.csv.{dead_pid}.abc123.tmp"
    litter.write_text("half")
    folder_litter = tmp_path / f".submit.csv.{dead_pid}.def456.tmp"
    folder_litter.mkdir()
    live = tmp_path / f".submit.csv.{os.getpid()}.zzz.tmp"
    live.write_text("in progress")
    atomic_write_text(tmp_path / "submit.csv", "title,path\n")
    assert not litter.exists() and not folder_litter.exists()
    assert live.exists()
    assert (tmp_path / "submit.csv").read_text() == "title,path\n"


@pytest.fixture
def full_disk(tmp_path):
    yield from _small_disk(tmp_path, "64k")


@pytest.fixture
def roomier_disk(tmp_path):
    """Room for an adapter, not for a checkpoint's optimizer state too."""
    yield from _small_disk(tmp_path, "160k")


def _small_disk(tmp_path, size: str):
    """A tmpfs of ``size`` (root only); skipped with the reason where it cannot be mounted."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.decode().strip()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_nothing(full_disk):
    from cnclip_lora.errors import CnClipLoraError
    from cnclip_lora.utils.files import atomic_write_text

    final = full_disk / "submit.csv"
    with pytest.raises(CnClipLoraError, match=r"cannot write .*submit\.csv: No space left on device.*bytes free"):
        atomic_write_text(final, "title,path\n" * 20_000)  # ~220 KB into 64 KB
    assert not final.exists()
    assert [p.name for p in full_disk.iterdir()] == []  # no temp file left either


def test_retrieve_on_a_full_disk_exits_2_in_one_line(full_disk, tiny_model_dir, demo_dir, capsys):
    from cnclip_lora.commands import main

    (full_disk / "filler").write_bytes(b"x" * 60_000)
    code = main(["retrieve", "--model_name_or_path", str(tiny_model_dir), "--data_dir", str(demo_dir),
                 "--topk_output", str(full_disk / "topk.csv"), "--top_k", "100", "--device", "cpu",
                 "--cache_dir", ""])  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cnclip-lora")]
    assert code == 2 and len(lines) == 1 and "topk.csv" in lines[0] and "Traceback" not in err, err
    assert not (full_disk / "topk.csv").exists()


def test_export_onnx_on_a_full_disk_is_one_line_and_leaves_no_folder(full_disk, tiny_model_dir):
    pytest.importorskip("onnx", reason="onnx not installed: pip install 'cnclip-lora[onnx]'")
    from cnclip_lora.errors import CnClipLoraError
    from cnclip_lora.retrieve.export_onnx import export_onnx

    with pytest.raises(CnClipLoraError, match=r"cannot write .*onnx_out: No space left on device"):
        export_onnx(str(tiny_model_dir), full_disk / "onnx_out")
    assert list(full_disk.iterdir()) == []


def test_staged_dir_on_a_full_disk_is_one_line_and_leaves_no_folder(full_disk):
    from cnclip_lora.errors import CnClipLoraError
    from cnclip_lora.utils.files import staged_dir

    out = full_disk / "adapter"
    with pytest.raises(CnClipLoraError, match=r"cannot write .*adapter.*No space left on device"):
        with staged_dir(out) as staging:
            (staging / "adapter_model.safetensors").write_bytes(b"w" * 200_000)
    assert list(full_disk.iterdir()) == []  # neither the staging folder nor an empty adapter folder


@pytest.mark.parametrize("disk", ["full_disk", "roomier_disk"])
def test_training_into_a_full_disk_exits_2_in_one_line_and_leaves_no_partial_output(
    disk, request, tiny_model_dir, demo_dir, capsys
):
    """Whichever library hits the full disk first (safetensors, the tokenizer's Rust writer,
    torch.save), the run ends in one line naming the output folder, with no half checkpoint left."""
    from cnclip_lora.commands import main

    out = request.getfixturevalue(disk) / "run"
    code = main(["train", "--model_name_or_path", str(tiny_model_dir), "--data_dir", str(demo_dir),
                 "--output_dir", str(out), "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
                 "--per_device_train_batch_size", "4", "--lora_r", "4", "--lora_alpha", "8", "--val_size", "0",
                 "--use_cpu", "true", "--report_to", "none", "--dataloader_num_workers", "0",
                 "--check_images", "false"])  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cnclip-lora")]
    assert code == 2 and len(lines) == 1 and str(out) in lines[0] and "Traceback" not in err, err[-3000:]
    assert "No space left on device" in lines[0]
    leftovers = [p for p in out.rglob("*")] if out.exists() else []
    assert not [p for p in leftovers if p.name == "adapter_model.safetensors"], leftovers
    assert not [p for p in leftovers if ".staging" in p.name or p.name.endswith(".tmp")], leftovers
    assert not [p for p in leftovers if p.name.startswith("checkpoint-")], leftovers  # no half checkpoint
