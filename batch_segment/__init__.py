"""Batch prediction on Apache Spark with the served model: every photo under a folder (or an S3 prefix) to predict's
class-id PNGs and a manifest, on local[*] or a spark:// cluster (``python -m batch_segment --help``).

    storage  where photos come from and masks go: a local folder or an S3 prefix, each write atomic
    worker   what runs on the executors: the model loaded once per Python worker, one photo at a time
    manifest the manifest's rows: which photos are done, with which model, and why a bad one failed
    job      the driver: list, skip what is done, ship the model, run on Spark, merge the manifest
"""
