"""The data contracts: the labels file (``labels``), image and class-id label-PNG I/O (``images``) and
PaddleSeg's split lists (``split_lists``), DVC's hash of a data folder (``dvc_hash``). May import ``common``."""
