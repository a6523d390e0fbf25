"""A model config small enough to train in seconds, for tests that need a real artefact."""

TINY_MODEL_YAML = """
sasrec: {max_len: 12, dim: 16, heads: 2, blocks: 1, ffn_mult: 2, dropout: 0.2, use_event_type: true,
         use_time_gap: true, time_buckets: 10, item_bias: true}
train: {epochs: 2, batch_size: 64, lr: 0.005, weight_decay: 0.1, patience: 2, seed: 0, threads: 1,
        eval_batch_size: 256, all_windows: true}
knn: {neighbours: 20, windows: [5], decays: [0.7], shrink: 0.0}
blend: {weights: [0.3], eps: [0.001], enabled: true}
export: {opset: 17, top_k: 40, popular: 100, quantize_ops: [MatMul, Gemm]}
eval: {k: 10, sampled_negatives: 20, sample_seed: 1}
"""
