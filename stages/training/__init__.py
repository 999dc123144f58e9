"""Training both models. May import every layer below it.

Shared by both trainers: the metrics schema they write (``summary``), the
model folder, MLflow copy, plots and metrics they write at the end (``model_outputs``), data-parallel
training (``distributed``) and Paddle's launcher that starts it (``launcher``), the settings a small data
set cannot meet, adapted (``adaptation``), the fingerprint a checkpoint must match to be resumed
(``fingerprint``), the device and its threads (``device``), photos decoded once per run (``photo_cache``)
and a moving average of the weights (``weight_average``).

DoveNet on paddle.Model.fit (train_paddle): its inputs checked (``dovenet_inputs``), dataset and loader
(``dataset``), loss (``loss``), validation metric (``validation_metric``), optimizer (``optimizer``), the
per-epoch callback (``epoch_tracker``), the fit (``dovenet_fit``) and its checkpoint (``dovenet_checkpoint``).

A PaddleSeg model (train_paddleseg): its inputs checked (``paddleseg_inputs``), the config and what
PaddleSeg builds from it (``paddleseg_config``), its datasets (``paddleseg_data``), PaddleSeg's fixes for
Paddle 3 (``paddleseg_compat``), the loop (``paddleseg_loop``), its checkpoints (``paddleseg_checkpoint``)
and the check of a config's pretrained weights (``pretrained``).
"""
