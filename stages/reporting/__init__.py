"""The report stage's pieces: the models' results it reads (``results``), its pictures (``pictures``), the
document and its Jinja2 templates (``document``, ``templates/``), what it records in MLflow, the champion
included (``record``), and the short summary a run ends with (``summary``). May import every layer below it."""
