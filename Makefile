# mmolor: one-command setup, test and demo.
#
#   make test     create .venv (if missing), install the whole stack, run pytest
#   make test-fast  the same, but only the tests not marked slow
#   make demo     same setup, then run the fine-tuning demo (no download)
#   make install  only the setup part (shared by test and demo)
#
# The install is idempotent: a stamp file records the last successful run and
# is refreshed whenever setup.py, mmolor/version.py, this Makefile or the
# fused CPU kernel's source (mmolor/optim/csrc/olor_cpu.cpp) change.
# mmcv has no wheel on PyPI; it is built from source with its C++ ops
# against the installed torch (~15 min on 2 cores) and kept in a wheel
# folder named after that torch version, so later installs take seconds and
# a torch change never reuses an mmcv built against another torch (pip's own
# wheel cache keys mmcv by mmcv's version only).
#
# Every version (the tested stack, the build tools, the ranges) is in
# mmolor/version.py, their one source, read here: `spec` gives pip the
# versions `make install` installs, shell-quoted.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mmolor-installed
# mmcv's build: one compiler job per core.
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST_ARGS ?=
VERSIONS := $(PYTHON) mmolor/version.py
spec = $(shell $(VERSIONS) spec $(1))
TORCH := $(shell $(VERSIONS) version torch)
MMCV := $(shell $(VERSIONS) version mmcv)
$(if $(and $(TORCH),$(MMCV)),,$(error cannot read the versions from \
	mmolor/version.py with $(PYTHON); set PYTHON to a python3 interpreter))
MMCV_WHEELS ?= $(HOME)/.cache/mmolor/wheels/mmcv-$(MMCV)-torch-$(TORCH)

.PHONY: install test test-fast demo clean-venv

install: $(STAMP)

$(STAMP): setup.py mmolor/version.py Makefile mmolor/optim/csrc/olor_cpu.cpp
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch + torchvision: the pair that imports mmpretrain and timm
	# (torchvision has no build for the CPU-only torch wheels).
	$(PIP) install --upgrade $(call spec,pip) wheel ninja \
		$(call spec,torch torchvision numpy)
	# mmcv's setup.py imports pkg_resources, which newer setuptools dropped;
	# torch asks for a newer setuptools but does not need it to run, so
	# build with an old one (pip warns about the conflict) and restore it
	# after.
	$(PIP) install $(call spec,setuptools-for-mmcv)
	# mmcv has no wheel: build it once per torch version, with ops.
	@ls $(MMCV_WHEELS)/mmcv-$(MMCV)-*.whl >/dev/null 2>&1 || { \
		echo "building mmcv $(MMCV) with ops against torch $(TORCH) (~15 min)"; \
		MAX_JOBS=$(MAX_JOBS) tools/misc/build_mmcv_wheel.sh $(PY) $(MMCV) \
			$(MMCV_WHEELS); }
	$(PIP) install --force-reinstall --no-deps $(MMCV_WHEELS)/mmcv-$(MMCV)-*.whl
	# The setuptools torch asks for, one that still has pkg_resources
	# (mmengine imports it, e.g. to resolve `_base_ = 'mmdet::...'`).
	$(PIP) install --upgrade $(call spec,setuptools)
	# torch is named again in every install below: left free, pip may
	# downgrade it to satisfy another package's pins.
	# mmolor itself with every extra, and the tested versions of the
	# OpenMMLab packages (within the ranges setup.py takes from
	# mmolor/version.py); setup.py compiles OLOR's fused CPU kernel
	# (OpenMP), hence no build isolation.
	$(PIP) install --no-build-isolation -e '.[all,tests,demo]' \
		$(call spec,torch torchvision numpy mmcv mmengine mmdet \
		mmsegmentation mmpretrain timm)
	# DeepSpeed for mmengine's DeepSpeedStrategy, in the release that
	# mmengine imports (see mmolor/version.py). Its setup.py imports torch
	# (hence no build isolation).
	$(PIP) install --no-build-isolation $(call spec,deepspeed) \
		$(call spec,torch torchvision numpy)
	$(PY) tools/check_install.py
	@touch $(STAMP)

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The fast lane: every test but those marked slow (real training, the
# tools, several processes, builds; see setup.cfg), on one pytest-xdist
# worker per core.
test-fast: install
	$(PY) -m pytest tests -m "not slow" -n auto --dist worksteal $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo.py

clean-venv:
	rm -rf $(VENV)
