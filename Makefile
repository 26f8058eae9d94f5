# bagcert: one entry point. `make setup` once, then `make run` (main job) or `make test`.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# The standard torch + torchvision builds: they run on CPUs and on CUDA GPUs alike (issue 12).
# Another build (e.g. a CUDA index): make setup TORCH="torch==... torchvision==..."
TORCH   ?= torch==2.14.1 torchvision==0.29.1
PROFILE ?= auto
RF      ?= 7
MARGIN  ?= 0.5
# make reproduce DEVICES="cpu cpu": two configurations at once, one core each
DEVICES ?=

.PHONY: setup run test reproduce mathjax book publish screenshots clean

setup: $(BIN)/activate
$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH)),$(BIN)/pip install -q $(TORCH))
	$(BIN)/pip install -q -e ".[test,book]"
	touch $@

run: setup      ## main job: train one configuration (resumable), certify it on the test set
	$(BIN)/python -m bagcert_lib train --profile $(PROFILE) --rf $(RF) --margin $(MARGIN)

test: setup     ## the test suite and every notebook at smoke scale (CI runs exactly this)
	$(BIN)/python -m pytest --nbval -q

reproduce: setup  ## the whole grid (Figures 2 and 8) through the papermill notebooks; resumable
	$(BIN)/pip install -q -e ".[notebooks]"
	$(BIN)/python -m bagcert_lib.sweep --profile $(PROFILE) --estimate $(if $(DEVICES),--devices $(DEVICES))

mathjax:        ## MathJax 3 (npm package mathjax@3.2.2) into book/_static, so formulas render offline
	$(BIN)/python book/fetch_mathjax.py

book: setup mathjax  ## re-plot every figure and table from results/, build the site (warnings are errors)
	$(BIN)/jupyter-book build book/ -W --all   # --all: the pages depend on results/, which Sphinx does not track

publish: book   ## push the built site to the gh-pages branch (ghp-import; CI deploys main with .github/workflows/book.yml)
	$(BIN)/ghp-import -n -p -f book/_build/html

screenshots:    ## open the built site in headless Chromium (Debian: apt install chromium); PNGs in book/_build/screenshots
	$(BIN)/python book/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache
