# mmolor: one-command setup, test and demo.
#
#   make test     create .venv (if missing), install the whole stack, run pytest
#   make demo     same setup, then run the fine-tuning demo (no download)
#   make install  only the setup part (shared by test and demo)
#
# The install is idempotent: a stamp file records the last successful run and
# is refreshed whenever setup.py or this Makefile change. mmcv 2.1.0 has no
# wheel on PyPI; it is built from source with its C++ ops against the
# installed torch (~15 min on 2 cores) and kept in a wheel folder named
# after that torch version, so later installs take seconds and a torch
# change never reuses an mmcv built against another torch (pip's own wheel
# cache keys mmcv by mmcv's version only).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mmolor-installed
# mmcv's build: one compiler job per core.
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST_ARGS ?=
TORCH := 2.14.1
TORCHVISION := 0.29.1
MMCV := 2.1.0
MMCV_WHEELS ?= $(HOME)/.cache/mmolor/wheels/mmcv-$(MMCV)-torch-$(TORCH)

.PHONY: install test demo clean-venv

install: $(STAMP)

$(STAMP): setup.py Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch 2.14.1 + torchvision 0.29.1: the pair that imports mmpretrain and
	# timm (torchvision has no build for the CPU-only torch wheels).
	$(PIP) install --upgrade 'pip<26' wheel ninja 'torch==$(TORCH)' \
		'torchvision==$(TORCHVISION)' 'numpy<2'
	# mmcv's setup.py imports pkg_resources, which setuptools>=70 dropped;
	# torch asks for setuptools>=77 but does not need it to run, so build
	# with an old one (pip warns about the conflict) and restore it after.
	$(PIP) install 'setuptools<70'
	# mmcv has no wheel: build it once per torch version, with ops.
	@ls $(MMCV_WHEELS)/mmcv-$(MMCV)-*.whl >/dev/null 2>&1 || { \
		echo "building mmcv $(MMCV) with ops against torch $(TORCH) (~15 min)"; \
		MAX_JOBS=$(MAX_JOBS) tools/misc/build_mmcv_wheel.sh $(PY) $(MMCV) \
			$(MMCV_WHEELS); }
	$(PIP) install --force-reinstall --no-deps $(MMCV_WHEELS)/mmcv-$(MMCV)-*.whl
	# >=77 for torch, <81 because mmengine still imports pkg_resources
	# (e.g. to resolve `_base_ = 'mmdet::...'`).
	$(PIP) install --upgrade 'setuptools>=77,<81'
	# torch is named again in every install below: left free, pip may
	# downgrade it to satisfy another package's pins.
	# mmolor itself, and the OpenMMLab packages in the ranges setup.py takes
	# from mmolor/version.py (their one source); setup.py compiles OLOR's
	# fused CPU kernel (OpenMP), hence no build isolation.
	$(PIP) install --no-build-isolation -e '.[tests,demo]' \
		'torch==$(TORCH)' 'torchvision==$(TORCHVISION)' 'mmcv==$(MMCV)' \
		'timm==1.0.31' 'numpy<2'
	# DeepSpeed for mmengine's DeepSpeedStrategy: 0.16.9, because mmengine
	# 0.10.7 imports deepspeed.runtime.fp16.onebit, which later releases
	# dropped. Its setup.py imports torch (hence no build isolation).
	$(PIP) install --no-build-isolation 'deepspeed==0.16.9' \
		'torch==$(TORCH)' 'torchvision==$(TORCHVISION)' 'numpy<2'
	$(PY) tools/check_install.py
	@touch $(STAMP)

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo.py

clean-venv:
	rm -rf $(VENV)
