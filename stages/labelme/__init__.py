"""labelme's annotation format: finding, reading and validating JSON files and their images
(``annotations``), and the shape rasteriser, pixel-identical to labelme's (``shapes``).
May import ``common`` and ``data``."""
