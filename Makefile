# doveseg: `make demo` sets up and runs the whole pipeline; `make test` sets up and runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Stages run as `python -m stages.<name>`: put the venv first so dvc's commands find its python.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup setup-dev setup-team setup-spark setup-docs demo test test-fast lint params bench docs mlflow-ui demo-data team-up team-down clean

# What the pipeline needs (make demo), then the dev extra on top (make test: pytest, hypothesis, labelme 6).
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@ $(BIN)/.installed-team $(BIN)/.installed-spark $(BIN)/.installed-docs   # the dev extra includes the team, spark and docs ones

$(BIN)/.installed-team: $(BIN)/.installed
	$(BIN)/python -m pip install -e ".[team]"
	touch $@

$(BIN)/.installed-spark: $(BIN)/.installed
	$(BIN)/python -m pip install -e ".[spark]"
	touch $@

$(BIN)/.installed-docs: $(BIN)/.installed
	$(BIN)/python -m pip install -e ".[docs]"
	touch $@

setup: $(BIN)/.installed
setup-dev: $(BIN)/.installed-dev
setup-team: $(BIN)/.installed-team
setup-spark: $(BIN)/.installed-spark   ## pyspark for python -m batch_segment (docs/scale.md; Java 17 from Debian)
setup-docs: $(BIN)/.installed-docs

demo: setup            ## run the whole pipeline on the bundled demo doves, then say what came out
	DOVESEG_QUIET_SUMMARY=1 dvc repro
	python -m stages.reporting.summary

test: setup-dev lint   ## lint, then every test, slow ones included (what CI runs)
	pytest -m "slow or not slow"

test-fast: setup-dev   ## the fast tests only
	pytest

lint: setup-dev        ## ruff's rules (pyproject.toml) and its formatting, checked; `ruff format .` fixes the latter
	ruff check .
	ruff format --check .

params: setup          ## recompose params.yaml from conf/, e.g. make params PROFILE=smoke
	python -m stages.common.config $(if $(PROFILE),profile=$(PROFILE),)

bench: setup           ## speed benchmarks (print figures and ratios; not tests)
	python bench/convert.py
	python bench/real_photos.py

docs: setup-docs       ## build the docs site into site/ (.venv/bin/mkdocs serve shows it on http://127.0.0.1:8000)
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict   # the variable mutes Material's end-of-life notice (docs/development.md)

MLFLOW_UI_PORT ?= 5000
mlflow-ui: setup       ## browse the local MLflow store on http://127.0.0.1:5000 (MLFLOW_UI_PORT=...), in the Model training view
	@python -c "from stages.common.config import load_params; from stages.tracking.runs import experiment_page; \
	print('Open', experiment_page(load_params(['mlflow.tracking_uri=sqlite:///mlflow.db']), 'http://127.0.0.1:$(MLFLOW_UI_PORT)'))"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(MLFLOW_UI_PORT)

demo-data: setup       ## regenerate the bundled demo set (deterministic)
	python -m demo_data.doves --out data/raw --count 124 --seed 0

team-up: setup-team    ## PostgreSQL, S3 and MLflow with accounts under .team/ (docs/team.md)
	python -m team_stack up $(TEAM_ARGS)

team-down:             ## stop what team-up started (its data stays in .team/)
	python -m team_stack down

clean:                 ## remove pipeline outputs (not data/raw, not the MLflow store)
	rm -rf data/processed data/splits models exports metrics plots predictions reports
