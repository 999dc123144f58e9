"""doveseg: labelme annotations to trained, compared PaddlePaddle segmentation models, as DVC stages.

This folder's top level holds the pipeline stages and nothing else: each is a module with a pure
``run(cfg) -> dict`` and a short Hydra main, run as ``python -m stages.<name>``. Code that several stages
share lives one level down, in subpackages named by what they hold.

Import rule (tests/test_layout.py enforces it): stage modules may import any subpackage; subpackages never
import stage modules, and import each other only downward in this order, lowest first:

    common      Hydra config plumbing, StageError, atomic outputs
    data        labels file, image and label-PNG I/O, split lists, DVC's hash of a data folder
    labelme     reading labelme annotations, the shape rasteriser
    evaluation  confusion-matrix metrics, the report's figures
    models      DoveNet, exported inference models, their ONNX conversion
    prediction  masks from an exported model, prediction files
    tracking    MLflow: the store and its URIs, training runs, the Model Registry and its one champion
    training    data-parallel launch, the training dataset, PaddleSeg's loop and fixes
    reporting   the report's inputs, pictures, document (Jinja2 templates), MLflow record and summary

The demo-data generators are a tool, not part of the pipeline: they live beside this package, in
demo_data/, and nothing here imports them.
"""
