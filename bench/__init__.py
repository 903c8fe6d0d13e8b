"""Benchmark harness: llama-aot packages next to their peers (PyTorch eager, llama.cpp), same run, same weights."""
