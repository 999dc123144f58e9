"""Networks and model files: the tutorial's DoveNet (``dovenet``), the exported inference model both
trainers write and predict reads (``inference_model``, with PaddleSeg's deploy.yaml), and its ONNX
conversion and onnxruntime predictor (``onnx_model``). May import ``common``, ``data`` and ``evaluation``."""
