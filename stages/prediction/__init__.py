"""Running an exported model on photos: class-id masks at each photo's own size (``masks``) and the
prediction files in PaddleSeg's conventions, plus the photos of a folder to predict (``files``); how
sure the model is (``uncertainty``) and the page of the photos to annotate first (``review_page``); the
served model, photos in and masks out (``photo_segmenter``); Paddle Inference against onnxruntime, the
check of an ONNX conversion (``engine_check``).
May import every layer below it: ``common``, ``data``, ``labelme``, ``evaluation``, ``models``."""
