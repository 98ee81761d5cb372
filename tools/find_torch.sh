#!/bin/sh
# find_torch.sh OUT.mk TORCH_DIR PYTHON...: which libtorch the capture
# library builds against, written to OUT.mk as make variables (the Makefile
# includes it) and to torch_build.h beside it (for --version).  In order:
#
#   1. TORCH_DIR, when set: an unpacked libtorch (include/, lib/) or a
#      `torch` package folder (the same layout);
#   2. the torch each PYTHON imports (`python3` on PATH first): its
#      include/ and lib/, its C++ ABI (torch.compiled_with_cxx11_abi()),
#      CUDA when the package has lib/libtorch_cuda.so;
#   3. Debian's libtorch-dev (/usr/include/torch, /usr/lib/<arch>).
#
# OUT is rewritten only when its inputs change, so a `make` that does not
# rebuild the library does not import torch.  Exit 1 with a message when
# TORCH_DIR is set but holds no libtorch, or when nothing is found.
set -eu
out=$1
torch_dir=$2
shift 2
inputs="TORCH_DIR=$torch_dir PYTHON=$*"
if [ -f "$out" ] && [ -f "$(dirname "$out")/torch_build.h" ] && [ "$(sed -n 2p "$out")" = "# inputs: $inputs" ]; then
	exit 0
fi

# The version a libtorch's headers declare (every layout has them).
header_version() {
	sed -n 's/^#define TORCH_VERSION "\(.*\)"$/\1/p; /^#define TORCH_VERSION \\$/{n;s/^ *"\(.*\)" *$/\1/p}' \
		"$1/torch/csrc/api/include/torch/version.h" 2>/dev/null | head -n 1
}

# 1 when libc10 uses the C++11 std::string ABI, else 0.
abi_of() {
	if nm -D --defined-only "$1" 2>/dev/null | grep -q '__cxx11'; then echo 1; else echo 0; fi
}

emit() { # from, include dir, lib dir (empty: the system's), version, abi, cuda
	from=$1 inc=$2 lib=$3 ver=${4:-unknown} abi=$5 cuda=$6
	# -isystem: libtorch's own headers warn under -Wall -Werror
	# (never -isystem /usr/include: it breaks libstdc++'s #include_next)
	cflags="-isystem $inc/torch/csrc/api/include -D_GLIBCXX_USE_CXX11_ABI=$abi"
	[ "$inc" = /usr/include ] || cflags="-isystem $inc $cflags"
	libs="-ltorch -ltorch_cpu -lc10"
	[ -n "$lib" ] && libs="-L$lib -Wl,-rpath,$lib $libs"
	# libtorch_cuda registers CUDA from its static initializers: nothing
	# calls into it by name, so --as-needed would drop it.
	[ "$cuda" = 1 ] && libs="$libs -Wl,--no-as-needed -ltorch_cuda -lc10_cuda -Wl,--as-needed"
	tmp="$out.tmp.$$"
	{
		echo "# libtorch for the capture library, from tools/find_torch.sh"
		echo "# inputs: $inputs"
		echo "TORCH_FROM := $from"
		echo "TORCH_VERSION := $ver"
		echo "TORCH_CUDA := $cuda"
		echo "TORCH_CFLAGS := $cflags"
		echo "TORCH_LIBS := $libs"
	} > "$tmp"
	{
		echo "/* libtorch the capture library was built against (tools/find_torch.sh) */"
		echo "#define CLTFS_TORCH_FROM \"$(echo "$from" | sed 's/[\\"]/\\&/g')\""
		echo "#define CLTFS_TORCH_VERSION \"$ver\""
		echo "#define CLTFS_TORCH_CUDA $cuda"
	} > "$(dirname "$out")/torch_build.h"
	mv "$tmp" "$out"
	echo "capture: libtorch $ver from $from, CUDA: $([ "$cuda" = 1 ] && echo yes || echo no)" >&2
	exit 0
}

# A folder laid out as libtorch: include/torch and lib/libtorch.so.
from_dir() { # from, dir, abi (empty: from libc10), version (empty: the headers')
	d=$1 dir=$2 abi=$3 ver=${4:-}
	[ -f "$dir/lib/libtorch.so" ] && [ -d "$dir/include/torch" ] || return 1
	[ -n "$abi" ] || abi=$(abi_of "$dir/lib/libc10.so")
	cuda=0
	[ -e "$dir/lib/libtorch_cuda.so" ] && cuda=1
	emit "$d" "$dir/include" "$dir/lib" "${ver:-$(header_version "$dir/include")}" "$abi" "$cuda"
}

mkdir -p "$(dirname "$out")"
if [ -n "$torch_dir" ]; then
	from_dir "TORCH_DIR ($torch_dir)" "$torch_dir" "" ||
		{ echo "TORCH_DIR=$torch_dir: no libtorch there (expected include/torch and lib/libtorch.so)" >&2; exit 1; }
fi
for py in "$@"; do
	command -v "$py" >/dev/null 2>&1 || continue
	info=$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__)); print(int(torch.compiled_with_cxx11_abi())); print(torch.__version__)' 2>/dev/null) || continue
	dir=$(echo "$info" | sed -n 1p)
	abi=$(echo "$info" | sed -n 2p)
	pyver=$(echo "$info" | sed -n 3p)
	from_dir "$py ($dir)" "$dir" "$abi" "$pyver" || true
done
if [ -f /usr/include/torch/csrc/api/include/torch/torch.h ]; then
	lib=$(ls /usr/lib/*/libc10.so 2>/dev/null | head -n 1)
	cuda=0
	[ -n "$lib" ] && [ -e "$(dirname "$lib")/libtorch_cuda.so" ] && cuda=1
	emit "Debian libtorch-dev (/usr/include/torch)" /usr/include "" "$(header_version /usr/include)" \
		"$(abi_of "$lib")" "$cuda"
fi
echo "no libtorch found: set TORCH_DIR to an unpacked libtorch, install torch for python3, or install libtorch-dev" >&2
exit 1
