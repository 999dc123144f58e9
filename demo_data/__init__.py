"""Generators of demo data, a tool beside the pipeline (not part of it): the bundled demo set (``doves``:
``make demo-data`` rendered data/raw) and multi-class, phone-sized labelme sets for tests and benches
(``multiclass``). They may import the stages package's subpackages; nothing in stages/ imports them
(tests/test_layout.py). Run from the repository root: ``python -m demo_data.doves``."""
