"""Networks and model files: the tutorial's DoveNet (``dovenet``) and the exported inference model both
trainers write and predict reads (``inference_model``). May import ``common``, ``data`` and ``evaluation``."""
