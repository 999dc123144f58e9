"""Networks and model files: the tutorial's DoveNet (``dovenet``), the exported inference model both
trainers write and predict reads (``inference_model``, with PaddleSeg's deploy.yaml), its ONNX
conversion and onnxruntime predictor (``onnx_model``), the conversion's dynamic-then-static strategy
(``onnx_conversion``), and a PaddleSeg model rebuilt from its config to be traced at a static size, with
its architecture's label (``paddleseg_model``). May import ``common``, ``data`` and ``evaluation``."""
