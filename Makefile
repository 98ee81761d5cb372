# cltfs: build, test, install, demo, bench.
# `make` builds build/cltfs; `make check` runs every test; `make deps`
# installs the Debian packages the build and the tests need.

PREFIX  ?= /usr/local
DESTDIR ?=
PYTHON  ?= /usr/bin/python3
CC      ?= cc
B       := build
VERSION := 0.1.0

PKGS     := fuse3 libzstd libcjson zlib libcurl libjpeg libpng
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter -Wno-format-truncation
CFLAGS  ?= -O2 -g
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 $(WARN) $(CFLAGS) $(PKG_CFLAGS) -Icodec -Ihfcache -Icapture -Ifs -DCLTFS_VERSION='"$(VERSION)"'
LIBS    := $(PKG_LIBS) -ldl -lpthread -lm
CXX     ?= g++
# C++ only in the capture library: libtorch is C++.
ALL_CXXFLAGS := -std=c++17 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter $(CFLAGS) $(PKG_CFLAGS) \
	-Icodec -Icapture -DCLTFS_VERSION='"$(VERSION)"'
TORCH_CFLAGS := -I/usr/include/torch/csrc/api/include
TORCH_LIBS   := -ltorch -ltorch_cpu -lc10
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

CODEC_SRC := codec/common.c codec/frame.c codec/pickle.c codec/ptzip.c codec/manifest.c
HF_SRC    := hfcache/http.c hfcache/repo.c
FS_SRC    := fs/store.c fs/cache.c fs/view.c fs/import.c fs/tools.c fs/hub.c fs/plain.c fs/capture.c fs/fuse.c \
	     $(HF_SRC)
CAP_SRC   := capture/config.c capture/tokenizer.c capture/loader.c capture/image.c
MAIN_SRC  := fs/main.c
HDRS      := codec/codec.h fs/fs.h fs/fuse_edge.h hfcache/hfcache.h hfcache/http.h capture/capture.h capture/image.h
OBJS      = $(patsubst %,$(1)/%.o,$(basename $(CODEC_SRC) $(FS_SRC) $(CAP_SRC)))
UNIT_TESTS := codec_frame codec_pt codec_manifest fs_store hf_config capture_image

.PHONY: all deps check unit unit-asan pytest pytest-asan demo bench install uninstall clean

all: $(B)/cltfs $(B)/libcltfs-capture.so

$(B)/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(B)/asan/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN) -c $< -o $@

$(B)/libcltfs_codec.a: $(CODEC_SRC:%.c=$(B)/%.o)
	rm -f $@ && ar rcs $@ $^

$(B)/libcltfs_fs.a: $(patsubst %,$(B)/%.o,$(basename $(FS_SRC) $(CAP_SRC)))
	rm -f $@ && ar rcs $@ $^

# -rdynamic and the whole archives: the capture library calls back into the
# binary (errors, the tokenizer, images), one copy of each.
$(B)/cltfs: $(B)/fs/main.o $(B)/libcltfs_fs.a $(B)/libcltfs_codec.a
	$(CC) $(CFLAGS) -rdynamic -o $@ $(B)/fs/main.o -Wl,--whole-archive $(B)/libcltfs_fs.a $(B)/libcltfs_codec.a \
		-Wl,--no-whole-archive $(LIBS)

# libtorch, opened by capture/loader.c on the first capture only (linking it
# costs every command 0.7 s at start).  About a minute to compile.
$(B)/libcltfs-capture.so: capture/model.cpp $(HDRS)
	$(CXX) $(ALL_CXXFLAGS) $(TORCH_CFLAGS) -fPIC -shared $< -o $@ $(TORCH_LIBS) -lcjson

$(B)/zerofs: bench/zerofs.c
	$(CC) -std=c11 -D_GNU_SOURCE $(WARN) -O2 $(shell pkg-config --cflags fuse3) $< -o $@ $(shell pkg-config --libs fuse3) -lpthread

# Unit tests: plain and under ASan/UBSan (they run in seconds).
$(B)/tests/%: tests/%.c tests/unit.h $(B)/libcltfs_fs.a $(B)/libcltfs_codec.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests $< -o $@ $(B)/libcltfs_fs.a $(B)/libcltfs_codec.a $(LIBS)

$(B)/asan/tests/%: tests/%.c tests/unit.h $(call OBJS,$(B)/asan) $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN) -Itests $< $(call OBJS,$(B)/asan) -o $@ $(LIBS)

$(B)/asan/cltfs: $(B)/asan/fs/main.o $(call OBJS,$(B)/asan) $(B)/libcltfs-capture.so
	$(CC) $(CFLAGS) $(SAN) -rdynamic $(B)/asan/fs/main.o $(call OBJS,$(B)/asan) -o $@ $(LIBS)
	ln -sf ../libcltfs-capture.so $(B)/asan/libcltfs-capture.so

$(B)/asan/fuzz_replay: tests/fuzz/replay.c tests/fuzz/targets.c $(CODEC_SRC) $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN) tests/fuzz/replay.c tests/fuzz/targets.c $(CODEC_SRC) -o $@ $(LIBS)

unit: $(UNIT_TESTS:%=$(B)/tests/%)
	@set -e; for t in $^; do $$t; done

unit-asan: $(UNIT_TESTS:%=$(B)/asan/tests/%) $(B)/asan/fuzz_replay
	@set -e; for t in $(UNIT_TESTS:%=$(B)/asan/tests/%); do ASAN_OPTIONS=detect_leaks=1 $$t; done
	$(PYTHON) tests/fuzz/make_corpus.py $(B)/fuzz-corpus
	ASAN_OPTIONS=detect_leaks=1 $(B)/asan/fuzz_replay $(B)/fuzz-corpus

pytest: $(B)/cltfs
	CLTFS_BIN=$(CURDIR)/$(B)/cltfs $(PYTHON) -m pytest -q -p no:cacheprovider tests/

# Every end-to-end test again with the daemon and the commands under
# ASan/UBSan: a leak or an error makes the daemon exit non-zero, which
# fails the test (about 50 s).
pytest-asan: $(B)/asan/cltfs
	CLTFS_BIN=$(CURDIR)/$(B)/asan/cltfs ASAN_OPTIONS=detect_leaks=1 \
		$(PYTHON) -m pytest -q -p no:cacheprovider tests/

check: deps
	$(MAKE) all
	$(MAKE) unit
	$(MAKE) unit-asan
	$(MAKE) pytest-asan
	$(MAKE) pytest

deps:
	@sh tools/deps.sh

demo: deps
	$(MAKE) all
	@sh tools/demo.sh

bench: deps
	$(MAKE) all $(B)/zerofs
	$(PYTHON) bench/bench.py --cltfs $(B)/cltfs --zerofs $(B)/zerofs
	$(PYTHON) bench/hub_bench.py --cltfs $(B)/cltfs --total-mb 1100
	$(PYTHON) bench/capture_bench.py --cltfs $(B)/cltfs

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

clean:
	rm -rf $(B)
