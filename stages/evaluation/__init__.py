"""Scoring and showing results: the confusion-matrix metrics shared by validation, predict and report
(``metrics``) and the report's figures (``figures``). May import ``common`` and ``data``."""
