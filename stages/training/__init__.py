"""Training both models: MLflow tracking (``tracking``), data-parallel launch (``distributed``), the
DoveNet training dataset and loader (``dataset``), PaddleSeg's fixes for Paddle 3 (``paddleseg_compat``),
the loop over PaddleSeg's components (``paddleseg_loop``) and the settings a small data set cannot meet,
adapted (``adaptation``). May import every layer below it."""
