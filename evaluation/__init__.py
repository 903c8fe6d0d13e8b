"""Quality measurement: perplexity and bits per byte of packages and checkpoints (``llama-aot eval``)."""
