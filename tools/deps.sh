#!/bin/sh
# Install the Debian packages cltfs's build and tests need, when missing.
# As root: apt-get.  Otherwise: print the exact command and fail.
set -e
PKGS="build-essential pkg-config clang fuse3 libfuse3-dev libzstd-dev libcjson-dev zlib1g-dev libcurl4-openssl-dev libssl-dev libtorch-dev libsentencepiece-dev libjpeg62-turbo-dev libpng-dev sentencepiece python3-sentencepiece python3-pil python3-torch python3-numpy python3-pytest python3-pytest-xdist python3-boto3 nginx-light curl slurm-wlm munge debootstrap"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "cltfs: missing packages:$missing" >&2
	echo "cltfs: run: sudo apt-get update && sudo apt-get install -y$missing" >&2
	exit 1
fi
echo "cltfs: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
