"""Running an exported model on photos: class-id masks at each photo's own size (``masks``) and the
prediction files in PaddleSeg's conventions, plus the photos of a folder to predict (``files``).
May import every layer below it: ``common``, ``data``, ``labelme``, ``evaluation``, ``models``."""
