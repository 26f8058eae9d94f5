# bagcert: one entry point. `make setup` once, then `make run` (main job) or `make test`.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# The standard torch + torchvision builds: they run on CPUs and on CUDA GPUs alike.
# Another build: make setup TORCH="torch==... torchvision==..." (CPU-only wheels, 0.2 GB instead
# of 5.5 GB: TORCH="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu")
TORCH   ?= torch==2.14.1 torchvision==0.29.1
PROFILE ?= auto
RF      ?= 7
MARGIN  ?= 0.5
# make reproduce DEVICES="cpu cpu": two configurations at once, one core each
DEVICES ?=

.PHONY: setup run test reproduce data devdata mathjax book publish screenshots clean

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

# CIFAR-10's official archive (https://www.cs.toronto.edu/~kriz/cifar.html), md5 checked
DATA        ?= data
CIFAR10_URL ?= https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz
CIFAR10_MD5 ?= c58f30108f718f92721af3b95e74349a

data: $(DATA)/cifar-10-python.tar.gz   ## CIFAR-10 (163 MB) into data/; `make book` then certifies its test images
$(DATA)/cifar-10-python.tar.gz:
	mkdir -p $(DATA)
	curl -fL --retry 3 -o $@.part $(CIFAR10_URL)
	echo "$(CIFAR10_MD5)  $@.part" | md5sum -c -
	mv $@.part $@

# papermill and the kernel it starts, for a GPU machine's Python 3.12 without network access
# (scripts/device.sh retrain); packages such images usually hold (PyYAML, tqdm, requests, ...) are
# left out, and so are debugpy and jedi, which ipykernel and IPython run without
DEVICE_WHEELS ?= papermill==2.7.0 nbclient==0.11.0 nbformat==5.11.1 jupyter_client==8.10.0 \
  jupyter_core==5.9.1 ipykernel==7.4.0 ipython==9.18.1 ipython_pygments_lexers==1.1.1 comm==0.2.3 \
  traitlets==5.16.1 pyzmq==27.3.0 tornado==6.6.1 nest-asyncio2==1.7.4 matplotlib-inline==0.2.2 \
  prompt_toolkit==3.0.53 wcwidth==0.9.4 pexpect==4.9.0 ptyprocess==0.7.0 stack-data==0.6.3 \
  asttokens==3.0.2 executing==2.3.0 pure_eval==0.2.4 platformdirs==4.14.9 fastjsonschema==2.22.3 \
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 \
  entrypoints==0.4.2 tenacity==9.2.1

# the dataset copied to .devdata/ (BAGCERT_DATA there): the JPEG copy where it exists
DEVDATA_SRC ?= $(firstword $(wildcard ../shared/datasets/cifar10-jpeg.tar.gz $(DATA)/cifar10-jpeg.tar.gz))

devdata: setup  ## for scripts/device.sh on a GPU machine without network: the dataset and papermill's wheels into .devdata/
	mkdir -p .devdata/whl
	$(if $(DEVDATA_SRC),cp -u $(DEVDATA_SRC) .devdata/cifar10-jpeg.tar.gz,@echo "no cifar10-jpeg.tar.gz: copy a dataset to the machine and set BAGCERT_DATA there")
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .devdata/whl $(DEVICE_WHEELS)
	du -sh .devdata

mathjax:        ## MathJax 3 (npm package mathjax@3.2.2) into book/_static, so formulas render offline
	$(BIN)/python book/fetch_mathjax.py

# the book's notebooks run in notebooks/: point them at data/ when it holds CIFAR-10 (make data)
BOOK_DATA = $(if $(wildcard $(DATA)/cifar*),BAGCERT_DATA="$${BAGCERT_DATA:-$(abspath $(DATA))}")

book: setup mathjax  ## re-plot every figure and table from results/, build the site (warnings are errors)
	$(BOOK_DATA) $(BIN)/jupyter-book build book/ -W --all   # --all: the pages depend on results/, which Sphinx does not track

publish: book   ## push the built site to the gh-pages branch (ghp-import; CI deploys main with .github/workflows/book.yml)
	$(BIN)/ghp-import -n -p -f book/_build/html

screenshots:    ## open the built site in headless Chromium (Debian: apt install chromium); PNGs in book/_build/screenshots
	$(BIN)/python book/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache
