"""Training loop: full-softmax cross-entropy over the catalogue on all windows, AdamW, early stopping on the
validation NDCG@k, fixed seeds, rich progress bar."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from model_export.config import ModelConfig
from model_export.dataset import Split, UserSeq, Vocab, left_pad, training_windows
from model_export.metrics import evaluate
from model_export.sasrec import SASRec


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def sasrec_logp(model: SASRec, hist: Sequence[UserSeq], batch_size: int = 256) -> np.ndarray:
    """(B, N) log-softmax of the last position for each history (eval mode, torch eager)."""
    model.eval()
    cfg = model.cfg
    out = []
    for a in range(0, len(hist), batch_size):
        it, ty, ts = left_pad(hist[a : a + batch_size], cfg.max_len, model.pad)
        h = model.encode_newest(torch.from_numpy(it), torch.from_numpy(ty), torch.from_numpy(ts))  # (B, d)
        out.append(F.log_softmax(model.logits(h), dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.n_items), dtype=np.float32)


@dataclass
class TrainResult:
    """The best (by validation NDCG@k) model and how training went."""

    model: SASRec
    best_epoch: int
    valid_ndcg: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, valid ndcg


def _param_groups(model: SASRec, wd: float) -> list[dict[str, object]]:
    """Weight decay on matrices and embeddings only (not biases / LayerNorm), as usual for AdamW."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "ln" in name else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def train_sasrec(split: Split, vocab: Vocab, cfg: ModelConfig, progress: bool = True) -> TrainResult:
    """Train on the training parts of all users; stop when validation NDCG@k stops improving."""
    tc = cfg.train
    torch.set_num_threads(max(1, min(tc.threads, 2)))
    set_seeds(tc.seed)
    n = vocab.n_items
    train_seqs = [split.train_part(u) for u in range(len(split.users))]
    win = training_windows(train_seqs, cfg.sasrec.max_len, vocab.pad, vocab.unk, tc.all_windows)
    vh, vt = split.inputs("valid")
    model = SASRec(cfg.sasrec, n)
    opt = torch.optim.AdamW(_param_groups(model, tc.weight_decay), lr=tc.lr)
    data = [torch.from_numpy(a) for a in (win.items, win.types, win.ts, win.targets)]
    gen = torch.Generator().manual_seed(tc.seed)
    best, best_epoch, best_state, bad = -1.0, 0, copy.deepcopy(model.state_dict()), 0
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    steps = (len(win.items) + tc.batch_size - 1) // tc.batch_size
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    epoch = 0
    with Progress(
        TextColumn("[bold]SASRec[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        disable=not progress,
        transient=False,
    ) as bar:
        task = bar.add_task("epoch 1", total=tc.epochs * steps)
        for epoch in range(1, tc.epochs + 1):
            model.train()
            perm = torch.randperm(len(win.items), generator=gen)
            total, count = 0.0, 0
            for a in range(0, len(perm), tc.batch_size):
                ix = perm[a : a + tc.batch_size]
                it, ty, ts, y = (d[ix] for d in data)
                logits = model.logits(model.encode(it, ty, ts))  # (B, L, N)
                loss = F.cross_entropy(logits.reshape(-1, n), y.reshape(-1), ignore_index=-100)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(ix)
                count += len(ix)
                bar.advance(task)
            res = evaluate(
                lambda h, _ex: sasrec_logp(model, h, tc.eval_batch_size),
                vh,
                vt,
                n,
                cfg.eval,
                batch_size=tc.eval_batch_size,
            )
            ndcg = res["full"].ndcg
            history.append({"epoch": epoch, "loss": total / max(count, 1), "valid_ndcg": ndcg})
            bar.update(
                task,
                description=f"epoch {epoch} loss {total / max(count, 1):.3f} "
                f"valid ndcg@{cfg.eval.k} {ndcg:.4f} (best {max(best, ndcg):.4f})",
            )
            if ndcg > best:
                best, best_epoch, bad = ndcg, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
                if bad >= tc.patience:
                    break
        bar.update(task, completed=tc.epochs * steps)
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_epoch, best, epoch, time.perf_counter() - t0, history)
