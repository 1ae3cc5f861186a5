"""Smaller and faster models from trained ones: int8 quantization (quantize.py) and pruning
(prune.py). Each writes a new run folder that loads, evaluates and serves like the original."""
