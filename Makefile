# The two quickstart commands: `make demo` and `make test`. Both build .venv when missing.
# torch==2.13.0 is installed first: a CPU wheel of it lies on this machine's disk and pip
# takes it; any other order pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pgps-installed

.PHONY: demo test bench compare lint venv nnunet-venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,bench,remote]'
	@touch $@

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	@bash tools/ensure_chromium.sh
	$(PY) -m pytest -q --durations=15

lint: $(STAMP)
	$(PY) -m ruff check pgps_data pgps_train tests tools

nnunet-venv:
	bash tools/nnunet_venv.sh .venv-nnunet

# Ratios measured side by side in one run; the nnU-Net peer runs in its own venv.
bench: $(STAMP) nnunet-venv
	$(PY) tools/bench_read.py
	$(PY) tools/bench_convert.py
	$(PY) tools/bench_loader.py
	$(PY) tools/bench_augment.py
	$(PY) tools/bench_remote.py

# The lesion benchmark (about 40 + 30 minutes on 2 CPU cores, measured 2026-12-02):
# constant, efficiency and performance x 3 seeds with augmentation, at equal iterations,
# then at equal seconds (the constant runs shared). Rerun to continue after a stop;
# reports in $(COMPARE)/out. SEEDS=0 runs one seed (about 25 minutes).
COMPARE ?= runs/compare
SEEDS   ?= 0 1 2
LESION  := $(COMPARE)/Task01_Lesion
compare: $(STAMP)
	@test -f $(LESION)/dataset.json || $(PY) -m pgps_data.cli.synth $(LESION) --preset lesion
	$(PY) -m pgps_data.cli.convert $(LESION) $(COMPARE)/lesion.zarr --workers 2 --quiet
	$(PY) -m pgps_train.cli.compare run $(COMPARE)/lesion.zarr --out $(COMPARE)/out \
	  --preset lesion-cpu --splits $(LESION)/splits_final.json --budget iterations --seeds $(SEEDS)
	$(PY) -m pgps_train.cli.compare run $(COMPARE)/lesion.zarr --out $(COMPARE)/out \
	  --preset lesion-cpu --splits $(LESION)/splits_final.json --budget seconds --seeds $(SEEDS)

clean:
	rm -rf $(VENV) .venv-nnunet .pytest_cache .ruff_cache
