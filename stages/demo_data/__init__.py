"""The generator of the bundled demo set (``doves``: ``make demo-data``). A tool, not a pipeline layer:
it may import any subpackage, and nothing in the pipeline imports it."""
