"""MLflow, in three concerns: the store and its URIs (``store``: where runs live, reaching it, retries),
training runs and what is added to them later (``runs``), and the Model Registry with its one champion
(``registry``). May import common and data."""
