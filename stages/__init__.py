"""doveseg: labelme annotations to trained, compared PaddlePaddle segmentation models, as DVC stages.

Each pipeline stage is a module here with a pure ``run(cfg) -> dict`` and a short Hydra main
(``python -m stages.<name>``). Code that several stages share lives in the other modules.
"""
