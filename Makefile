# mmolor: one-command setup, test and demo.
#
#   make test     create .venv (if missing), install the whole stack, run pytest
#   make demo     same setup, then run the fine-tuning demo (no download)
#   make install  only the setup part (shared by test and demo)
#
# The install is idempotent: a stamp file records the last successful run and
# is refreshed whenever setup.py or this Makefile change. mmcv 2.1.0 has no
# wheel on PyPI; it is built from source with its C++ ops once (~15 min on
# 2 cores) and pip's wheel cache makes later installs take seconds.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mmolor-installed
MAX_JOBS ?= 2
PYTEST_ARGS ?=

.PHONY: install test demo clean-venv

install: $(STAMP)

$(STAMP): setup.py Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: the machine's CPU wheel (a bare 'torch' would pull CUDA).
	$(PIP) install --upgrade 'pip<26' wheel ninja 'torch==2.13.0' 'numpy<2'
	# mmcv's setup.py imports pkg_resources, which setuptools>=70 dropped;
	# torch asks for setuptools>=77 but does not need it to run, so build
	# with an old one (pip warns about the conflict) and restore it after.
	$(PIP) install 'setuptools<70'
	# mmcv has no wheel: build it against the installed torch, with ops.
	MMCV_WITH_OPS=1 MAX_JOBS=$(MAX_JOBS) $(PIP) install --no-build-isolation \
		'mmcv==2.1.0' 'numpy<2'
	# >=77 for torch, <81 because mmengine still imports pkg_resources
	# (e.g. to resolve `_base_ = 'mmdet::...'`).
	$(PIP) install --upgrade 'setuptools>=77,<81'
	$(PIP) install 'mmengine==0.10.7' 'mmdet==3.3.0' 'mmsegmentation==1.2.2' \
		ftfy regex 'numpy<2'
	$(PIP) install --no-build-isolation -e '.[tests,demo]'
	$(PY) -c "import mmolor, mmcv.ops; print('mmolor', mmolor.__version__, 'ready')"
	# OLOR's fused CPU kernel is compiled on first use; do it now, once.
	$(PY) -c "from mmolor.optim._cpu_kernel import cpu_kernel; cpu_kernel()"
	@touch $(STAMP)

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo.py

clean-venv:
	rm -rf $(VENV)
