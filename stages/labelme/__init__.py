"""labelme's annotation format: finding, reading and validating JSON files and their images
(``annotations``), and the shape rasteriser, pixel-identical to labelme's (``shapes``); a mask traced
into polygons that rasterise back to it (``polygons``) and model-drafted JSON (``drafts``).
May import ``common`` and ``data``."""
