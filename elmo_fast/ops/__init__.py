"""Ops: each folder holds `reference.py` (plain PyTorch oracle) next to its fast backends."""
