"""MLflow, in three concerns: the store and its URIs (``store``: where runs live, reaching it, retries),
training runs and what is added to them later (``runs``), the ONNX and served models export logs to a run
(``logged_models``), and the Model Registry with its one champion (``registry``). May import every layer
below it."""
