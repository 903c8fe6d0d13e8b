"""Model compression before compilation: structured pruning (``llama-aot prune``)."""
