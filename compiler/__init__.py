"""llama-aot compiler: Llama 3 checkpoint -> quantized Relax module -> per-target library."""
