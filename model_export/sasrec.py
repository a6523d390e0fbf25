"""SASRec-style causal self-attention recommender (Kang & McAuley, "Self-Attentive Sequential Recommendation",
ICDM 2018) and the serving graph exported to ONNX.

NOTE departures from the paper: pre-norm blocks with a final LayerNorm; optional event-type and time-gap
embeddings added to the input; a per-item output bias; trained with full-softmax cross-entropy over the whole
catalogue instead of one sampled negative (Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec
really
better than SASRec?", RecSys 2023); positions are counted from the right end so a shorter input means the same
as a left-padded one. In serving, the last block runs for the newest position alone (`SASRec.encode_top`): the
same model, only what one recommendation needs is computed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from model_export.config import SASRecConfig
from model_export.dataset import EVENT_TYPES

NEG = -1e9  # additive attention mask value (finite, so fully masked rows cannot produce NaN)


class CausalSelfAttention(nn.Module):
    """Multi-head attention written out with plain ops: exports to a small, exact ONNX graph."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, newest_only: bool = False) -> torch.Tensor:
        # x (B, L, d); mask (B, 1, L, L) additive -> (B, Lq, d): Lq = L, or 1 with `newest_only` (queries from the
        # last position alone; keys and values still from every position)
        b, length, d = x.shape
        dh = d // self.heads
        q, k, v = self.qkv(x).reshape(b, length, 3, self.heads, dh).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, dh)
        lq = length
        if newest_only:
            q, mask, lq = q[:, :, -1:], mask[:, :, -1:], 1  # (B, H, 1, dh), (B, 1, 1, L)
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(dh)) + mask  # (B, H, Lq, L)
        att = self.drop(torch.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, lq, d)  # (B, Lq, d)
        return self.out(y)


class Block(nn.Module):
    """Pre-norm Transformer block: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_mult * dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, newest_only: bool = False) -> torch.Tensor:
        # x (B, L, d) -> (B, L, d), or (B, 1, d) with `newest_only` (the last position's output alone)
        a = self.attn(self.ln1(x), mask, newest_only)  # (B, Lq, d)
        if newest_only:
            x = x[:, -1:]  # (B, 1, d)
        x = x + self.drop(a)
        return x + self.drop(self.ffn(self.ln2(x)))  # (B, Lq, d)


class SASRec(nn.Module):
    gap_thresholds: torch.Tensor

    """Item + position (+ event-type, time-gap) embeddings -> causal blocks -> scores over the tied table.

    Item indices: 0..N-1 real items, N = pad, N+1 = unknown item (its embedding starts at zero).
    """

    def __init__(self, cfg: SASRecConfig, n_items: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_items = n_items
        self.pad = n_items
        d = cfg.dim
        self.item_emb = nn.Embedding(n_items + 2, d, padding_idx=n_items)
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        self.type_emb = nn.Embedding(len(EVENT_TYPES) + 1, d, padding_idx=0) if cfg.use_event_type else None
        self.gap_emb = nn.Embedding(cfg.time_buckets, d) if cfg.use_time_gap else None
        # Bucket b >= 1: gaps with threshold[b-1] <= gap; thresholds (2^k - 1) s, k = 1..buckets-2, in ms.
        thr = [1000 * (2**k - 1) for k in range(1, max(cfg.time_buckets - 1, 1))]
        self.register_buffer("gap_thresholds", torch.tensor(thr, dtype=torch.int64), persistent=False)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.blocks))
        self.final_ln = nn.LayerNorm(d)
        self.item_bias = nn.Parameter(torch.zeros(n_items)) if cfg.item_bias else None
        nn.init.normal_(self.item_emb.weight, std=d**-0.5)
        with torch.no_grad():
            self.item_emb.weight[n_items:].zero_()  # pad stays zero; unknown starts neutral
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def gap_buckets(self, ts: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, L) int64 log2-bucketed gap to the previous input event; 0 where there is none.

        Integer comparisons only, so torch and onnxruntime agree exactly at bucket edges.
        """
        gap = ts[:, 1:] - ts[:, :-1]  # (B, L-1) ms
        b = 1 + (gap.unsqueeze(-1) >= self.gap_thresholds).sum(-1)  # (B, L-1)
        has_prev = valid[:, 1:] & valid[:, :-1]
        b = torch.where(has_prev, b, torch.zeros_like(b))
        return torch.cat([torch.zeros_like(ts[:, :1]), b], dim=1)  # (B, L)

    def encode(self, items: torch.Tensor, types: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """items/types/ts (B, L), left-padded -> hidden states (B, L, d) after the final LayerNorm."""
        return self.encode_top(*self.encode_trunk(items, types, ts))

    def encode_newest(self, items: torch.Tensor, types: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """items/types/ts (B, L), left-padded -> the last position's hidden state (B, d): what scoring needs."""
        return self.encode_top(*self.encode_trunk(items, types, ts), newest_only=True)[:, 0]

    def encode_trunk(
        self, items: torch.Tensor, types: torch.Tensor, ts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and every block but the last: x (B, L, d) and the additive attention mask (B, 1, L, L)."""
        length = items.shape[1]
        valid = items != self.pad  # (B, L)
        x = self.item_emb(items) * math.sqrt(self.cfg.dim)  # (B, L, d)
        pos = torch.arange(length, device=items.device) + (self.cfg.max_len - length)  # right-aligned positions
        x = x + self.pos_emb(pos).unsqueeze(0)
        # NOTE: a disabled input still enters as "+ 0 * input" so the exported graph keeps a fixed signature
        # (the exporter drops unused inputs).
        zero = (types * 0).unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        x = x + (self.type_emb(types) if self.type_emb is not None else zero)
        if self.gap_emb is not None:
            x = x + self.gap_emb(self.gap_buckets(ts, valid))
        else:
            x = x + (ts * 0).unsqueeze(-1).to(x.dtype)
        x = self.emb_drop(x) * valid.unsqueeze(-1).to(x.dtype)
        ar = torch.arange(length, device=items.device)
        causal = ar.unsqueeze(0) <= ar.unsqueeze(1)  # (L, L): key j <= query i
        eye = ar.unsqueeze(0) == ar.unsqueeze(1)
        allowed = causal.unsqueeze(0) & (valid.unsqueeze(1) | eye.unsqueeze(0))  # (B, L, L); self always allowed
        mask = torch.where(allowed, torch.zeros((), dtype=x.dtype), torch.full((), NEG, dtype=x.dtype))
        mask = mask.unsqueeze(1)  # (B, 1, L, L)
        for blk in self.blocks[:-1]:
            x = blk(x, mask)
        return x, mask  # (B, L, d), (B, 1, L, L)

    def encode_top(self, x: torch.Tensor, mask: torch.Tensor, newest_only: bool = False) -> torch.Tensor:
        """The last block and the final LayerNorm over `encode_trunk`'s output: (B, L, d), or (B, 1, d) with
        `newest_only`, which runs the last block for the newest position's query alone (the other positions'
        outputs of the last block only feed their own next-item scores).

        NOTE: not in the paper (Kang & McAuley 2018 always encode every position); the same function of the inputs
        (equal to `encode(...)[:, -1:]` up to float rounding: matrix products of other shapes), with the last block at
        ~40% of its cost when one position is scored (model_export/RESULTS.md, section 7)."""
        if len(self.blocks):
            x = self.blocks[-1](x, mask, newest_only)  # (B, Lq, d)
        elif newest_only:
            x = x[:, -1:]
        return self.final_ln(x)  # (B, Lq, d)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., N) scores against the tied item embedding table."""
        out = h @ self.item_emb.weight[: self.n_items].T
        return out + self.item_bias if self.item_bias is not None else out


class KNNScorer(nn.Module):
    nbr_idx: torch.Tensor
    nbr_sim: torch.Tensor

    """Recency-weighted item-KNN over sparse top-M neighbour lists, as tensors (so it can live in the graph).

    score(j) = sum over the last `window` input items i (age a = 0 for the newest) of decay**a * sim(i, j).
    """

    def __init__(self, nbr_idx: np.ndarray, nbr_sim: np.ndarray, n_items: int, window: int, decay: float) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"KNN window must be >= 1, got {window}")
        m = nbr_idx.shape[1]
        # Rows for pad and unknown point at item 0 with similarity 0.
        idx = np.concatenate([nbr_idx, np.zeros((2, m), dtype=np.int64)]).astype(np.int64)
        sim = np.concatenate([nbr_sim, np.zeros((2, m), dtype=np.float32)]).astype(np.float32)
        self.register_buffer("nbr_idx", torch.from_numpy(idx))  # (N+2, M)
        self.register_buffer("nbr_sim", torch.from_numpy(sim))  # (N+2, M)
        self.n_items = n_items
        self.window = window
        self.decay = decay

    def forward(self, items: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # items (B, L) left-padded; like (B, N) any tensor of the output shape -> (B, N)
        # Only the newest `window` positions have a weight: gather and scatter just those (W = min(L, window)).
        # Same result, bit for bit, as weighting all L positions with zeros beyond the window (those only added
        # 0.0), at W / L of the cost: the (B, W, M) gathers and the scatter-add are most of the blend's time.
        items = items[:, -self.window :]  # (B, W)
        b, length = items.shape
        age = (length - 1 - torch.arange(length, device=items.device)).to(torch.float32)  # (W,) newest = 0
        w = torch.pow(torch.full((), self.decay), age)  # (W,)
        sims = self.nbr_sim[items] * w.view(1, -1, 1)  # (B, W, M); pad/unknown rows are zero
        idx = self.nbr_idx[items]  # (B, W, M)
        return torch.zeros_like(like).scatter_add(1, idx.reshape(b, -1), sims.reshape(b, -1))


class ServingGraph(nn.Module):
    """What ships: everything from the user's recent events to top-K, in one graph.

    Inputs: item_idx (B, L) int64 left-padded with pad; event_type (B, L) int64 (0 = pad); ts_ms (B, L) int64;
    exclude (B, N) bool (items not to recommend). Outputs: top-K indices (B, K) int64 and scores (B, K); user
    vector (B, d); log-probability of each observed next item (B, L-1), 0 where undefined (no earlier input
    event, or an unknown/pad item), only with `with_logprob`; full scores (B, N) with excluded items at -inf.

    Two variants of the same model are exported: `with_logprob=True` (model.onnx, every output above) and
    `with_logprob=False` (model.topk.onnx, no next_item_logprob). The fast one scores the last position only: its
    cost is one (B, d) x (d, N) product instead of (B, L, d) x (d, N) plus a (B, L, N) log-softmax, and its last
    block runs for the newest position alone (`SASRec.encode_top`). Both compute the user vector and `scores` with
    the same ops (that newest-only last block, then log-softmax of its logits), so they recommend the same items;
    the full one also runs the last block over every position, for the log-probs. NOTE an implementation
    departure from SASRec (Kang & McAuley 2018) only in what is computed, not in the model: the paper scores
    every position; the served lists need only the last one.
    """

    def __init__(
        self,
        model: SASRec,
        top_k: int,
        knn: KNNScorer | None = None,
        blend_w: float = 0.0,
        blend_eps: float = 1e-4,
        with_logprob: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.top_k = min(top_k, model.n_items)
        self.knn = knn if blend_w > 0 else None
        self.blend_w = float(blend_w)
        self.blend_eps = float(blend_eps)
        self.with_logprob = bool(with_logprob)

    def variant(self, with_logprob: bool) -> ServingGraph:
        """The same model, blend and K with or without the next-item log-probs (shares the modules)."""
        return ServingGraph(self.model, self.top_k, self.knn, self.blend_w, self.blend_eps, with_logprob)

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.with_logprob:
            return ("topk_items", "topk_scores", "user_vector", "next_item_logprob", "scores")
        return ("topk_items", "topk_scores", "user_vector", "scores")

    def forward(
        self, item_idx: torch.Tensor, event_type: torch.Tensor, ts_ms: torch.Tensor, exclude: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        m = self.model
        n = m.n_items
        x, mask = m.encode_trunk(item_idx, event_type, ts_ms)  # (B, L, d), (B, 1, L, L)
        u = m.encode_top(x, mask, newest_only=True)[:, 0]  # (B, d): the last block for the newest position alone
        scores = F.log_softmax(m.logits(u), dim=-1)  # (B, N)
        if self.knn is not None:
            k = self.knn(item_idx, scores)  # (B, N) >= 0
            k = k / (k.max(-1, keepdim=True).values + 1e-12)
            scores = scores + self.blend_w * torch.log(k + self.blend_eps)
        scores = torch.where(exclude, torch.full((), float("-inf")), scores)
        top_s, top_i = torch.topk(scores, self.top_k, dim=-1)  # (B, K)
        if not self.with_logprob:
            return top_i, top_s, u, scores
        h = m.encode_top(x, mask)  # (B, L, d): every position, for the next-item log-probs
        logp = F.log_softmax(m.logits(h[:, :-1]), dim=-1)  # (B, L-1, N): positions that have a next item
        nxt = item_idx[:, 1:]  # (B, L-1)
        defined = (nxt < n) & (item_idx[:, :-1] != m.pad)
        got = logp.gather(-1, torch.clamp(nxt, max=n - 1).unsqueeze(-1)).squeeze(-1)  # (B, L-1)
        next_logp = torch.where(defined, got, torch.zeros_like(got))
        return top_i, top_s, u, next_logp, scores
