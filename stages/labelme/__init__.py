"""labelme's annotation format: finding, reading and validating JSON files and their images
(``annotations``), and the shape rasteriser, pixel-identical to labelme's (``shapes``); a mask traced
into polygons that rasterise back to it (``polygons``) and model-drafted JSON (``drafts``). An annotation
converted into a processed sample folder (``processed_sample``) with labelme2voc's picture of it
(``label_viz``), and a folder of them converted on a process pool (``conversion``).
May import ``common`` and ``data``."""
