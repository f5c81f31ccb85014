# oxloop's two commands:
#   make run    build oxloop and run a demo asyncio program on it
#   make test   lint (rustfmt and clippy for the engine and bench/loadgen,
#               ruff, and stubtest: the extension's stubs against the built
#               module), Rust unit tests, then for
#               every Python: behaviour tests (integration tests against real
#               redis-server and PostgreSQL included) and CPython's
#               test_asyncio conformance suite; the same two on a portable
#               build (macOS's and the BSDs' code paths, run on Linux);
#               compile checks for macOS, FreeBSD, Windows and Python
#               3.14/3.14t; last, upstream libraries' own test suites on
#               oxloop (3.12; tests/upstream)
#   make bench  every benchmark against every rival loop; writes docs/benchmarks.md
# Everything installs into .venv-<version>/ (pip packages and the Rust build).

PY_VERSIONS ?= 3.11 3.12 3.13
RUN_VERSION ?= 3.12

venv = $(CURDIR)/.venv-$(1)
vpy = $(call venv,$(1))/bin/python

.PHONY: run test lint rust-test services portable check-targets upstream bench clean $(addprefix venv-,$(PY_VERSIONS)) $(addprefix test-,$(PY_VERSIONS))

run: venv-$(RUN_VERSION)
	$(call vpy,$(RUN_VERSION)) -m oxloop examples/echo.py

test: lint rust-test services $(addprefix test-,$(PY_VERSIONS)) portable check-targets upstream

# redis-server and PostgreSQL for the integration tests (Debian packages).
services:
	scripts/install-services

# One virtual environment per Python, with oxloop built and installed (editable).
$(addprefix venv-,$(PY_VERSIONS)): venv-%:
	@test -x $(call vpy,$*) || "$$(scripts/python-for $*)" -m venv $(call venv,$*)
	$(call vpy,$*) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(call vpy,$*) -m pip install -q --disable-pip-version-check -e .

# cargo builds pyo3 against the venv's Python (and test binaries link its libpython).
cargo_env = PYO3_PYTHON=$(call vpy,$(RUN_VERSION)) \
	LD_LIBRARY_PATH=$$($(call vpy,$(RUN_VERSION)) -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')

lint: venv-$(RUN_VERSION)
	cargo fmt --check
	$(cargo_env) cargo clippy --release --all-targets -q -- -D warnings
	cargo fmt --check --manifest-path bench/loadgen/Cargo.toml
	cargo clippy --release --all-targets -q --manifest-path bench/loadgen/Cargo.toml -- -D warnings
	$(call vpy,$(RUN_VERSION)) -m ruff check python tests bench examples
	$(call vpy,$(RUN_VERSION)) -m ruff format --check python tests bench examples
	$(call vpy,$(RUN_VERSION)) -m mypy.stubtest oxloop._oxloop

rust-test: venv-$(RUN_VERSION)
	$(cargo_env) cargo test --release -q
	$(cargo_env) cargo test --release -q --features portable

# The health report's browser test must not skip: `services` installs Chromium.
export OXLOOP_REQUIRE_BROWSER = 1

$(addprefix test-,$(PY_VERSIONS)): test-%: venv-% services
	$(call vpy,$*) -m tests.cpython.runner
	$(call vpy,$*) -m tests.cpython.runner --flavour proactor
	$(call vpy,$*) -m pytest tests -q -p no:cacheprovider

# The fallbacks macOS and the BSDs take (the Python selector backend on
# selectors.DefaultSelector(), a self-pipe waker, a thread per child), built
# on Linux with `--features portable` into a venv of its own (a wheel, apart
# from the editable native build) and put through both suites.
portable_venv = $(CURDIR)/.venv-portable
portable: services
	@test -x $(portable_venv)/bin/python || "$$(scripts/python-for $(RUN_VERSION))" -m venv $(portable_venv)
	$(portable_venv)/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	rm -rf build/portable
	CARGO_TARGET_DIR=$(CURDIR)/target/portable MATURIN_PEP517_ARGS="--features pyo3/extension-module,portable" \
		$(portable_venv)/bin/python -m pip wheel -q --disable-pip-version-check --no-deps -w build/portable .
	$(portable_venv)/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps build/portable/*.whl
	$(portable_venv)/bin/python -c 'import oxloop._oxloop as m; assert m.PORTABLE, m.__file__'
	$(portable_venv)/bin/python -m tests.cpython.runner
	$(portable_venv)/bin/python -m pytest tests -q -p no:cacheprovider

# macOS, FreeBSD and Windows compile checks; Linux against Python 3.14(t).
check-targets:
	scripts/check-targets

# anyio's, uvicorn's, ... own suites, from their sdists, on asyncio's loop and
# on oxloop; their test dependencies in a virtualenv of their own.
upstream_venv = $(CURDIR)/.venv-upstream
upstream:
	@test -x $(upstream_venv)/bin/python || "$$(scripts/python-for $(RUN_VERSION))" -m venv $(upstream_venv)
	$(upstream_venv)/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt -r tests/upstream/requirements.txt
	$(upstream_venv)/bin/python -m pip install -q --disable-pip-version-check -e .
	$(upstream_venv)/bin/python -m tests.upstream

bench: venv-$(RUN_VERSION) services
	$(call vpy,$(RUN_VERSION)) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	scripts/install-rsloop $(call vpy,$(RUN_VERSION))
	cd bench && $(call vpy,$(RUN_VERSION)) run.py

clean:
	rm -rf target .venv-* python/oxloop/*.so build/upstream build/portable
