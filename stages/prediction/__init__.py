"""Running an exported model on photos: class-id masks at each photo's own size (``masks``) and the
prediction files in PaddleSeg's conventions, plus the photos of a folder to predict (``files``); how
sure the model is (``uncertainty``) and the page of the photos to annotate first (``review_page``).
preannotate's drafts of labelme annotations: its settings, model and photos checked (``draft_inputs``),
the drafts (``drafting``) and the ranking, page and summary it writes (``draft_outputs``).
May import every layer below it: ``common``, ``data``, ``labelme``, ``evaluation``, ``models``."""
