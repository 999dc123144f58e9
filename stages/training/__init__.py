"""Training both models: MLflow tracking (``tracking``), the metrics schema both trainers write (``summary``),
data-parallel training (``distributed``) and Paddle's launcher that starts it (``launcher``), the settings a
small data set cannot meet, adapted (``adaptation``), the DoveNet training dataset and loader (``dataset``),
photos decoded once per run (``photo_cache``), PaddleSeg's fixes for Paddle 3 (``paddleseg_compat``), the
loop over PaddleSeg's components (``paddleseg_loop``) and the check of a config's pretrained weights
(``pretrained``). May import every layer below it."""
