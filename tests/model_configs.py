"""Small Llama 3 configs for random-weight test checkpoints, one per layout we must handle."""

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
BASE = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    vocab_size=512,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=[2, 3],
)
# name -> (config, writer options)
CHECKPOINTS = {
    # GQA + llama3 rope scaling, tied, fp32, one file, published config layout
    "tied_llama3rope": (dict(BASE, rope_scaling=LLAMA3_ROPE, tie_word_embeddings=True), {}),
    # untied, no rope scaling, bf16 weights in 3 shards, the config layout transformers 5 writes
    "untied_bf16_sharded": (
        dict(BASE, tie_word_embeddings=False, num_hidden_layers=3),
        dict(dtype="bfloat16", num_shards=3, config_layout="transformers5"),
    ),
    # pruned: per-layer heads / KV heads / FFN widths (two KV-cache groups), untied
    "heterogeneous": (
        dict(
            BASE,
            num_hidden_layers=3,
            tie_word_embeddings=False,
            rope_scaling=LLAMA3_ROPE,
            layer_shapes=[
                {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 256},
                {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 128},
                {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 192},
            ],
        ),
        dict(dtype="float16"),
    ),
    # shapes off the fast paths: hidden 96 and FFN 160 (sequential q4 nibble order), head_dim 24 (TVM's own
    # attention kernels), vocab 1000 (not a multiple of 16: the lm_head keeps f32 activations), tied
    "odd_shapes": (
        dict(BASE, hidden_size=96, intermediate_size=160, head_dim=24, vocab_size=1000, tie_word_embeddings=True),
        {},
    ),
}
