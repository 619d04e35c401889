"""Gathered contrastive loss across processes == one process on the concatenated batch.

Two CPU processes (torchrun, gloo) each take half of a fixed global batch, compute
``ContrastiveLoss`` with the gather, run one DDP step, and write their loss and weights.
The single-process reference runs the same code in this process on the whole batch.
Selected by ``pytest -k "distributed or gather"``.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from cnclip_lora.training.loss import ContrastiveLoss, gathered_contrastive_loss

SCRIPT = textwrap.dedent(
    '''
    import gc, json, os, sys
    import torch
    from cnclip_lora.training.loss import ContrastiveLoss

    GLOBAL_B, LOCAL_B = 8, 4


    class Towers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.text = torch.nn.Linear(6, 4)
            self.image = torch.nn.Linear(5, 4)
            self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, t, i):
            return self.text(t), self.image(i)


    def batch():
        g = torch.Generator().manual_seed(1)
        return torch.randn(GLOBAL_B, 6, generator=g), torch.randn(GLOBAL_B, 5, generator=g)


    def step(rows, valid=None, ddp=False):
        """One SGD step on `rows` of the global batch; returns loss, counts, new weights."""
        model = Towers()
        net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
        t, i = batch()
        te, ie = net(t[rows], i[rows])
        out = ContrastiveLoss()(te, ie, model.logit_scale, valid_mask=valid)
        out.loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
        weights = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
        return {"loss": out.loss.item(), "correct": int(out.t2i_correct), "total": int(out.total),
                "weights": weights}


    def reference():
        """One process, the whole batch (and the batch without its last row)."""
        full = step(slice(0, GLOBAL_B))
        short = step(slice(0, GLOBAL_B - 1))
        return {"full": full, "padded": short}


    def main(out_dir):
        rank = torch.distributed.get_rank()
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        # Uneven global batch of 7: the last rank pads its 4th row and masks it out.
        valid = torch.ones(LOCAL_B, dtype=torch.bool)
        if rank == torch.distributed.get_world_size() - 1:
            valid[-1] = False
        result = {"full": step(rows, ddp=True), "padded": step(rows, valid=valid, ddp=True)}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)


    if __name__ == "__main__":
        torch.distributed.init_process_group("gloo")
        try:
            main(sys.argv[1])
        finally:  # no DDP wrapper or pending work alive when the group goes, none at exit
            gc.collect()
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
    '''
)


def _gloo_available() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


@pytest.mark.skipif(not _gloo_available(), reason="needs torch.distributed with gloo")
def test_distributed_gather_two_processes_equal_single_process(tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(SCRIPT, encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    ref = runpy.run_path(str(script), run_name="reference")["reference"]()

    for case in ("full", "padded"):
        # The mean of the per-rank losses is the loss of the whole batch.
        mean_loss = sum(r[case]["loss"] for r in ranks) / 2
        assert mean_loss == pytest.approx(ref[case]["loss"], abs=1e-5)
        # After DDP's gradient averaging both ranks hold the single-process weights.
        for r in ranks:
            assert r[case]["weights"] == pytest.approx(ref[case]["weights"], abs=1e-5)
        # Exact accuracy counts add up across ranks (scored against the global batch).
        assert sum(r[case]["total"] for r in ranks) == ref[case]["total"]
        assert sum(r[case]["correct"] for r in ranks) == ref[case]["correct"]
    # The step really moved the weights (the comparison above is not vacuous).
    initial = runpy.run_path(str(script), run_name="reference")["Towers"]()
    flat = torch.cat([p.detach().flatten() for p in initial.parameters()]).tolist()
    assert max(abs(a - b) for a, b in zip(flat, ref["full"]["weights"])) > 1e-3
    assert ref["padded"]["total"] == 7


def test_gather_injected_rank_uses_the_gathered_batch(monkeypatch):
    """With rank/world_size injected and the collective stubbed, forward scores local rows
    against the global batch: the same numbers as the pure function on that rank's slice."""
    torch.manual_seed(0)
    text, image = torch.randn(6, 8), torch.randn(6, 8)
    tn, im = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
    valid = torch.tensor([True, True, True, True, True, False])

    def fake_all_gather(t, i, v):
        return tn, im, valid

    monkeypatch.setattr(ContrastiveLoss, "_all_gather", staticmethod(fake_all_gather))
    out = ContrastiveLoss(rank=1, world_size=2)(text[3:], image[3:], torch.tensor(2.0), valid_mask=valid[3:])
    want = gathered_contrastive_loss(
        tn[3:], im[3:], tn, im, torch.tensor(2.0), rank=1, valid_mask=valid[3:], all_valid_mask=valid
    )
    assert torch.allclose(out.loss, want.loss)
    assert out.total.item() == 2
    # Scored against all 6 rows, not only the local 3: differs from the local-only loss.
    local_only = ContrastiveLoss(gather=False)(text[3:], image[3:], torch.tensor(2.0), valid_mask=valid[3:])
    assert not torch.allclose(out.loss, local_only.loss)


def test_gather_simulated_two_ranks_gradients_match_global_batch():
    """Pure-function simulation of 2 ranks: sum of the rank losses' gradients / 2 == global."""
    torch.manual_seed(1)
    text = torch.randn(8, 4, requires_grad=True)
    image = torch.randn(8, 4, requires_grad=True)
    scale = torch.tensor(2.3, requires_grad=True)
    t, i = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
    logits = t @ i.T * scale.exp()
    target = torch.arange(8)
    ref = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    ref_grads = torch.autograd.grad(ref, [text, image, scale])
    t, i = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
    losses = [
        gathered_contrastive_loss(t[r * 4 : r * 4 + 4], i[r * 4 : r * 4 + 4], t, i, scale, rank=r).loss
        for r in range(2)
    ]
    grads = torch.autograd.grad(sum(losses) / 2, [text, image, scale])
    assert (sum(losses) / 2).item() == pytest.approx(ref.item(), abs=1e-6)
    for g, rg in zip(grads, ref_grads):
        assert torch.allclose(g, rg, atol=1e-6)
