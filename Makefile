# The two commands of the README. Both install what they need first (idempotent, fast when done).
# torch is pinned to the local CPU build first so pip never pulls multi-GB CUDA wheels here.
PY ?= python3

.PHONY: install demo test

install:
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'

demo: install
	$(PY) -m tldr_index.cli demo

test: install
	$(PY) -m pytest -q -n 2 --dist worksteal
