"""Plumbing every stage uses: the Hydra entry point and config composition (``config``), ``StageError``, and
atomic outputs (``outputs``). The lowest layer: it imports nothing else from ``stages``."""
