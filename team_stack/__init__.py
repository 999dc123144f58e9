"""A team's stack on one machine: PostgreSQL, SeaweedFS's S3 and an MLflow server with accounts.

A tool beside the pipeline (like demo_data/), run as ``python -m team_stack up|down|status`` (``make
team-up`` / ``make team-down``). Everything it keeps lives under ``.team/`` (ignored by git and DVC).
"""
