# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
# tcmalloc speeds up CPU training a lot on these machines; used only when the system has it
# (Debian: apt-get install libtcmalloc-minimal4).
TCMALLOC := $(firstword $(wildcard /usr/lib/*/libtcmalloc_minimal.so.4))
RUN    := $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC)) MPLBACKEND=Agg
DEMO_DIR ?= runs/demo

.PHONY: env demo test bench bench-accuracy bench-pretraining bench-selfsupervised bench-reconstruction clean

env: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	$(RUN) $(BIN)/medad synth --out data/synthetic --seed 0
	$(RUN) $(BIN)/medad train --data data/synthetic --config configs/demo.yaml --out $(DEMO_DIR) --overwrite
	@echo "Report: $(abspath $(DEMO_DIR))/report.html"

test: $(STAMP)
	$(RUN) $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(RUN) $(BIN)/python benchmarks/contrastive.py

bench-accuracy: $(STAMP)
	$(RUN) $(BIN)/python benchmarks/accuracy.py --resume

bench-pretraining: $(STAMP)
	$(RUN) $(BIN)/python benchmarks/pretraining.py

bench-selfsupervised: $(STAMP)
	$(RUN) $(BIN)/python benchmarks/selfsupervised.py --resume

bench-reconstruction: $(STAMP)
	$(RUN) $(BIN)/python benchmarks/reconstruction.py --resume

clean:
	rm -rf $(VENV) runs data/synthetic
