"""Generators of demo data: the bundled demo set (``doves``: ``make demo-data``) and multi-class,
phone-sized labelme sets for tests and benches (``multiclass``). Tools, not a pipeline layer: they may
import any subpackage, and nothing in the pipeline imports them."""
