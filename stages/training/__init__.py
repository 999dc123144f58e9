"""Training both models: the metrics schema both trainers write (``summary``),
data-parallel launch (``distributed``), the settings a small data set cannot meet, adapted (``adaptation``),
the DoveNet training dataset and loader (``dataset``), photos decoded once per run (``photo_cache``),
PaddleSeg's fixes for Paddle 3 (``paddleseg_compat``), the loop over PaddleSeg's components
(``paddleseg_loop``) and the check of a config's pretrained weights (``pretrained``). May import every layer
below it."""
