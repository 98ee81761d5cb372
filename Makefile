# cltfs: build, test, install, demo, bench.
# `make` builds build/cltfs and build/libcltfs-capture.so; `make check` runs
# every test; `make deps` installs the Debian packages the build and the
# tests need.  The layout is in README.md ("How the code is laid out").

PREFIX  ?= /usr/local
DESTDIR ?=
PYTHON  ?= /usr/bin/python3
CC      ?= cc
CLANG   ?= clang
B       := build
VERSION := 0.1.0
# Parallel jobs for the builds make check runs.
JOBS    ?= $(shell nproc 2>/dev/null || echo 2)

CORE_PKGS := libzstd libcjson zlib libcurl libcrypto libjpeg libpng
PKG_CFLAGS := $(shell pkg-config --cflags fuse3 $(CORE_PKGS) 2>/dev/null)
CORE_LIBS  := $(shell pkg-config --libs $(CORE_PKGS) 2>/dev/null) -ldl -lpthread -lm
FUSE_LIBS  := $(shell pkg-config --libs fuse3 2>/dev/null)

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter -Wno-format-truncation
CFLAGS  ?= -O2 -g
INCS    := -Icodec -Ihfcache -Icapture -Ifs/engine -Ifs/tiers -Ifs/cmd -Ifs/fuse
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 $(WARN) $(CFLAGS) $(PKG_CFLAGS) $(INCS) \
	-DCLTFS_VERSION='"$(VERSION)"' -MMD -MP
CXX     ?= g++
# C++ only in the capture library: libtorch is C++.
ALL_CXXFLAGS := -std=c++17 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter $(CFLAGS) $(PKG_CFLAGS) \
	-Icodec -Icapture -DCLTFS_VERSION='"$(VERSION)"' -MMD -MP
# libtorch: TORCH_DIR=, else the torch python3 imports, else Debian's
# libtorch-dev (tools/find_torch.sh says which; build/torch.mk has it).
TORCH_DIR ?=
TORCH_PYTHONS := python3 $(PYTHON)
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

# codec/: the formats.  core: the engine, the tiers and what they call (no
# FUSE: `make` fails if a libfuse symbol gets in).  The binary adds the
# commands and the FUSE adapter.
CODEC_SRC := $(wildcard codec/*.c)
CORE_SRC  := $(wildcard fs/engine/*.c fs/tiers/*.c hfcache/*.c) \
	     capture/config.c capture/tokenizer.c capture/image.c capture/loader.c capture/safetensors.c
BIN_SRC   := $(wildcard fs/cmd/*.c fs/fuse/*.c)
# What libcltfs-capture.so carries of its own (hidden, position-independent).
CAPLIB_SRC := codec/common.c codec/log.c capture/config.c capture/image.c capture/safetensors.c
UNIT_TESTS := codec_frame codec_pt codec_manifest fs_store fs_view hf_config s3_config capture_image
# fs_view fails allocations in turn through the linker's --wrap.
UNIT_LDFLAGS_fs_view := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup

objs = $(patsubst %.c,$(1)/%.o,$(2))

.PHONY: FORCE all deps torch2-root torch2-check check gpu-check stress unit unit-asan pytest pytest-asan demo bench fuzz coverage install uninstall clean

all: $(B)/cltfs $(B)/libcltfs-capture.so

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(B)/asan/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN) -c $< -o $@

$(B)/pic/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fPIC -c $< -o $@

$(B)/libcltfs_codec.a: $(call objs,$(B),$(CODEC_SRC))
	rm -f $@ && ar rcs $@ $^

# The core must link without libfuse: a libfuse symbol in it fails the build.
$(B)/libcltfs_core.a: $(call objs,$(B),$(CORE_SRC))
	rm -f $@ && ar rcs $@ $^
	@if nm -u $@ | grep -q ' fuse_'; then echo "$@: uses libfuse:"; nm -uA $@ | grep ' fuse_'; rm -f $@; exit 1; fi

$(B)/cltfs: $(call objs,$(B),$(BIN_SRC)) $(B)/libcltfs_core.a $(B)/libcltfs_codec.a
	$(CC) $(CFLAGS) -o $@ $(call objs,$(B),$(BIN_SRC)) $(B)/libcltfs_core.a $(B)/libcltfs_codec.a \
		$(FUSE_LIBS) $(CORE_LIBS)

# libtorch, opened by capture/loader.c on the first capture only (linking it
# costs every command 0.7 s at start).  About a minute to compile.  It
# links its own hidden copies of the C code it calls and exports only
# capimpl_*: `make` fails if it needs a symbol of cltfs's from its host.
$(B)/capture/model.o: capture/model.cpp $(B)/torch.mk
	@mkdir -p $(dir $@)
	$(CXX) $(ALL_CXXFLAGS) $(TORCH_CFLAGS) -I$(B) -fPIC -c $< -o $@

# Rewritten only when TORCH_DIR or the pythons change (then the library is
# rebuilt); a failure here names what was missing.
$(B)/torch.mk: FORCE
	@sh tools/find_torch.sh $@ "$(TORCH_DIR)" $(TORCH_PYTHONS)
-include $(B)/torch.mk
FORCE:

$(B)/libcltfs-capture.so: $(B)/capture/model.o $(call objs,$(B)/pic,$(CAPLIB_SRC)) capture/capture.map
	$(CXX) -shared -o $@ $(B)/capture/model.o $(call objs,$(B)/pic,$(CAPLIB_SRC)) \
		-Wl,--version-script=capture/capture.map -Wl,--no-undefined -Wl,--as-needed $(TORCH_LIBS) $(CORE_LIBS)
	@if nm -D --undefined-only $@ | grep -qE ' (cltfs|cap|pt|hf)_'; then \
		echo "$@: needs cltfs symbols from its host:"; nm -D --undefined-only $@ | grep -E ' (cltfs|cap|pt|hf)_'; \
		rm -f $@; exit 1; fi

$(B)/zerofs: bench/zerofs.c
	$(CC) -std=c11 -D_GNU_SOURCE $(WARN) -O2 $(shell pkg-config --cflags fuse3) $< -o $@ $(FUSE_LIBS) -lpthread

$(B)/codec_decode: bench/codec_decode.c $(B)/libcltfs_codec.a
	$(CC) $(ALL_CFLAGS) $< -o $@ $(B)/libcltfs_codec.a $(CORE_LIBS)

$(B)/h2_probe: bench/h2_probe.c
	$(CC) -std=c11 -D_GNU_SOURCE $(WARN) -O2 $< -o $@ $(shell pkg-config --libs libcurl)

$(B)/fill_index: bench/fill_index.c $(B)/libcltfs_core.a $(B)/libcltfs_codec.a
	$(CC) $(ALL_CFLAGS) $< -o $@ $(B)/libcltfs_core.a $(B)/libcltfs_codec.a $(CORE_LIBS)

# Unit tests: plain and under ASan/UBSan (they run in seconds).  They link
# the core and the codec only, never libfuse: fs_view reads views without it.
$(B)/tests/%: tests/%.c tests/unit.h $(B)/libcltfs_core.a $(B)/libcltfs_codec.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests $< -o $@ $(B)/libcltfs_core.a $(B)/libcltfs_codec.a $(CORE_LIBS) $(UNIT_LDFLAGS_$*)

ASAN_CORE = $(call objs,$(B)/asan,$(CORE_SRC) $(CODEC_SRC))

$(B)/asan/tests/%: tests/%.c tests/unit.h $(ASAN_CORE)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN) -Itests $< $(ASAN_CORE) -o $@ $(CORE_LIBS) $(UNIT_LDFLAGS_$*)

$(B)/asan/cltfs: $(call objs,$(B)/asan,$(BIN_SRC)) $(ASAN_CORE) $(B)/libcltfs-capture.so
	$(CC) $(CFLAGS) $(SAN) $(call objs,$(B)/asan,$(BIN_SRC)) $(ASAN_CORE) -o $@ $(FUSE_LIBS) $(CORE_LIBS)
	ln -sf ../libcltfs-capture.so $(B)/asan/libcltfs-capture.so

FUZZ_SRC := tests/fuzz/targets.c
$(B)/asan/fuzz_replay: tests/fuzz/replay.c $(FUZZ_SRC) $(ASAN_CORE)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN) -Itests/fuzz tests/fuzz/replay.c $(FUZZ_SRC) $(ASAN_CORE) -o $@ $(CORE_LIBS)

# Leaks end a sanitized run.  LeakSanitizer's record of dynamic TLS (its
# __tls_get_addr interceptor) is off: with libtorch loaded it now and then
# takes a garbage range for a TLS block, scans it and dies instead of
# checking ("Tracer caught signal 11": 3 of 8 runs of a mount capturing on
# a miss, 0 of 12 without it; google/sanitizers#1322).  Dynamic TLS then
# goes unscanned; no allocation of ours is held only there (thread-locals
# live in the executable's static TLS, still scanned), and every ASan run
# of make check reports no leak with it off.
ASAN_ENV = ASAN_OPTIONS=detect_leaks=1:intercept_tls_get_addr=0

unit: $(UNIT_TESTS:%=$(B)/tests/%)
	@set -e; for t in $^; do $$t; done

unit-asan: $(UNIT_TESTS:%=$(B)/asan/tests/%) $(B)/asan/fuzz_replay
	@set -e; for t in $(UNIT_TESTS:%=$(B)/asan/tests/%); do $(ASAN_ENV) $$t; done
	$(PYTHON) tests/fuzz/make_corpus.py $(B)/fuzz-corpus
	$(ASAN_ENV) $(B)/asan/fuzz_replay $(B)/fuzz-corpus tests/fuzz/corpus

# The slowest tests of each pass are listed after its summary: what to look
# at first when make check grows (CI should stay under 20 minutes).  With
# pytest-xdist (make deps installs it) a pass runs in $(JOBS) processes, a
# test file to each (module fixtures, such as a Slurm cluster or an S3
# server, are made once): the tests mostly wait on mounts, servers and
# children (a serial pass used 0.8 of the 2 cores: 350 s, 230 s in two).
XDIST := $(shell $(PYTHON) -c 'import xdist' 2>/dev/null && echo '-n $(JOBS) --dist loadfile')
PYTEST := $(PYTHON) -m pytest -q -p no:cacheprovider --durations=12 $(XDIST)
pytest: $(B)/cltfs
	CLTFS_BIN=$(CURDIR)/$(B)/cltfs $(PYTEST) tests/

# Every end-to-end test again with the daemon and the commands under
# ASan/UBSan: a leak or an error makes the daemon exit non-zero, which
# fails the test (about 6 minutes on 2 cores).  Tests marked plain_only
# (slow, no C path of their own: tests/conftest.py) are left out.
pytest-asan: $(B)/asan/cltfs
	CLTFS_BIN=$(CURDIR)/$(B)/asan/cltfs $(ASAN_ENV) \
		$(PYTEST) -m "not plain_only" tests/

# Everything make check runs is built first, beside the torch 2 root's
# debootstrap (mostly waiting on the mirror and the disk: 200 s), then run.
CHECK_BUILDS := all fuzz $(UNIT_TESTS:%=$(B)/tests/%) $(UNIT_TESTS:%=$(B)/asan/tests/%) $(B)/asan/fuzz_replay \
	$(B)/asan/cltfs
check: deps
	$(MAKE) -j$(JOBS) torch2-root $(CHECK_BUILDS)
	$(MAKE) unit
	$(MAKE) unit-asan
	$(MAKE) pytest-asan
	$(MAKE) pytest
	$(MAKE) torch2-check

# libFuzzer binaries (clang): build/fuzz/<target>; run one with
# build/fuzz/<target> NEW_DIR tests/fuzz/corpus (see tests/fuzz/README).
# The sources are compiled once for all targets (-fsanitize=fuzzer-no-link);
# each target is its entry point linked with them.
FUZZ_TARGETS := frame record manifest pt pickle tokenizer safetensors hub_json table queries s3_list
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 $(WARN) -Wno-unknown-warning-option -g -O1 \
	-fno-sanitize-recover=undefined $(PKG_CFLAGS) $(INCS) -Itests/fuzz -DCLTFS_VERSION='"$(VERSION)"'
FUZZ_OBJS := $(call objs,$(B)/fuzz/obj,$(FUZZ_SRC) $(CODEC_SRC) $(CORE_SRC))
fuzz: $(FUZZ_TARGETS:%=$(B)/fuzz/%)
$(B)/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link,address,undefined -MMD -MP -c $< -o $@
$(FUZZ_TARGETS:%=$(B)/fuzz/%): $(B)/fuzz/%: tests/fuzz/libfuzzer.c $(FUZZ_OBJS)
	$(CLANG) $(FUZZ_FLAGS) -fsanitize=fuzzer,address,undefined -DTARGET=cltfs_fuzz_$* $^ -o $@ $(CORE_LIBS)

# The randomized tests at scale 25 (make check runs them at 1): random reads
# of every kind, kill -9 of import and pull, random damage (README,
# Reliability).  About 4 minutes.
stress: $(B)/cltfs
	CLTFS_STRESS=25 CLTFS_BIN=$(CURDIR)/$(B)/cltfs $(PYTHON) -m pytest -q -p no:cacheprovider tests/test_stress.py

# On a machine with an NVIDIA GPU and a CUDA torch (PYTHON=...): build
# against it into build-gpu/, run the GPU capture tests, time capture
# against the torch reference (tools/gpu_check.sh; about 10 minutes).
gpu-check:
	@sh tools/gpu_check.sh

# s3rver, the S3 server of the S3 tests and benchmark (tests/s3server.py):
# from npm into build/node, once.
S3RVER := $(B)/node/node_modules/s3rver/package.json
$(S3RVER):
	@command -v npm >/dev/null || { echo "cltfs: npm (Node.js) is needed for the S3 tests: apt-get install npm, or Node.js from nodejs.org" >&2; exit 1; }
	npm install --no-audit --no-fund --prefix $(B)/node s3rver@3.7.1 >/dev/null

deps:
	@sh tools/deps.sh
	@$(MAKE) -s $(S3RVER)

# A Debian 13 root with torch 2.6 for tests/test_torch2.py and torch2-check
# (the host's torch is 1.13; users train with 2.x): debootstrap, once, 2 GB.
torch2-root:
	@sh tools/torch2_root.sh $(B)/torch2-root

# cltfs built in that root (gcc 14, libtorch 2.6, libfuse 3.17) and the
# capture, mount, view and error tests run there (about 2 minutes).
torch2-check: torch2-root
	@sh tools/torch2_check.sh $(B)/torch2-root

demo: deps
	$(MAKE) all
	@sh tools/demo.sh

bench: deps
	$(MAKE) all $(B)/zerofs $(B)/fill_index $(B)/codec_decode $(B)/h2_probe
	$(PYTHON) bench/bench.py --cltfs $(B)/cltfs --zerofs $(B)/zerofs --decode-tool $(B)/codec_decode
	$(PYTHON) bench/codec_bench.py --cltfs $(B)/cltfs --decoder $(B)/codec_decode
	$(PYTHON) bench/shuffle_bench.py --cltfs $(B)/cltfs
	$(PYTHON) bench/hub_bench.py --cltfs $(B)/cltfs --total-mb 1100
	$(PYTHON) bench/h2_bench.py --probe $(B)/h2_probe
	$(PYTHON) bench/s3_bench.py --cltfs $(B)/cltfs
	$(PYTHON) bench/capture_bench.py --cltfs $(B)/cltfs
	$(PYTHON) bench/scale.py --cltfs $(B)/cltfs --fill-index $(B)/fill_index

install: $(B)/cltfs $(B)/libcltfs-capture.so
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)/sbin $(DESTDIR)$(PREFIX)/lib/cltfs
	install -m 755 $(B)/cltfs $(DESTDIR)$(PREFIX)/bin/cltfs
	install -m 644 $(B)/libcltfs-capture.so $(DESTDIR)$(PREFIX)/lib/cltfs/libcltfs-capture.so
	install -m 644 man/cltfs.1 $(DESTDIR)$(PREFIX)/share/man/man1/cltfs.1
	ln -sf $(PREFIX)/bin/cltfs $(DESTDIR)/sbin/mount.cltfs
	ln -sf $(PREFIX)/bin/cltfs $(DESTDIR)/sbin/mount.fuse.cltfs

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/cltfs $(DESTDIR)$(PREFIX)/share/man/man1/cltfs.1 \
	      $(DESTDIR)$(PREFIX)/lib/cltfs/libcltfs-capture.so \
	      $(DESTDIR)/sbin/mount.cltfs $(DESTDIR)/sbin/mount.fuse.cltfs

# Line coverage of the C code by the unit tests and the pytest suite (the
# fuzzers not counted): the code built with --coverage into $(COV)/, the
# tests run against it, then tools/coverage.py's table of the files with
# the most lines never run (about 5 minutes on 2 cores; not part of make
# check).  `tools/coverage.py $(COV) --file hfcache/s3.c` then lists a
# file's lines no test reaches.
COV := build-cov
coverage: deps $(B)/libcltfs-capture.so
	rm -rf $(COV)
	$(MAKE) -j$(JOBS) B=$(COV) CFLAGS="-O0 -g --coverage" $(COV)/cltfs $(UNIT_TESTS:%=$(COV)/tests/%)
	cp $(B)/libcltfs-capture.so $(COV)/   # libtorch's C++: not measured, found beside the binary
	$(MAKE) B=$(COV) CFLAGS="-O0 -g --coverage" unit
	CLTFS_BIN=$(CURDIR)/$(COV)/cltfs $(PYTEST) -m "not plain_only" tests/
	$(PYTHON) tools/coverage.py $(COV)

clean:
	rm -rf $(B) $(COV)

# (not into the torch 2 root or node's modules: not ours, and large)
-include $(shell find $(B) \( -path $(B)/torch2-root -o -path $(B)/node \) -prune -o -name '*.d' -type f -print 2>/dev/null)
