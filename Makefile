# `make search` and `make test` set everything up on a fresh machine (Python >= 3.11).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TYPECHECK := build/typecheck
OFA_VERSION := 0.1.0.post202307202001
FACENET_VERSION := 2.6.0

.PHONY: all search test lint typecheck pytest bench clean

all: test

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	# Once-for-All's code (no weights), for the checkpoint-compatibility tests; its own
	# requirements would pull torchvision, so --no-deps (it needs only torch, numpy, pillow)
	$(BIN)/python -m pip install -q --no-deps ofa==$(OFA_VERSION)
	# facenet-pytorch's MTCNN R-Net / O-Net, the reference of the zoo's mtcnn_* models; its
	# requirements pin torch<2.3 and pull torchvision, so --no-deps (the nets need only torch)
	$(BIN)/python -m pip install -q --no-deps facenet-pytorch==$(FACENET_VERSION)
	touch $(STAMP)

search: $(STAMP)
	$(BIN)/nas search --supernet resnet50 --hw gpu

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow an editable install's import hook: check a non-editable copy
typecheck: $(STAMP)
	rm -rf $(TYPECHECK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -t $(TYPECHECK) .
	cd $(TYPECHECK) && ../../$(BIN)/mypy -p nas --config-file ../../pyproject.toml --cache-dir ../../.mypy_cache

pytest: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/search_nb201.py
	$(BIN)/python bench/supernets.py
	$(BIN)/python bench/latency_predictors.py
	$(BIN)/python bench/latency_cpu.py
	$(BIN)/python bench/training_free.py
	$(BIN)/python bench/teachers.py
	$(BIN)/python bench/compress_magnitude.py
	$(BIN)/python bench/jackpot.py
	$(BIN)/python bench/n2n.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/evonorm.py --max-minutes 45
	$(BIN)/python bench/skan.py --max-minutes 45

clean:
	rm -rf build $(VENV) nas-out nas.db nas.db-wal nas.db-shm
