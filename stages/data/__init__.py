"""The data contracts: the labels file (``labels``), image and class-id label-PNG I/O (``images``) and
PaddleSeg's split lists (``split_lists``). May import ``common``."""
