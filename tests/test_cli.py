"""The command line around the mount: make install, the man page, stat's
numbers, and the kernel readahead the mount sets for itself."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import needs_script, on_tty

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_make_install_prefix_destdir(tmp_path, cltfs_bin):
    dest = tmp_path / "dest"
    r = subprocess.run(["make", "-s", "-C", REPO, "install", "PREFIX=/opt/cl", "DESTDIR=%s" % dest],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    binary = dest / "opt/cl/bin/cltfs"
    assert os.access(binary, os.X_OK)
    assert (dest / "opt/cl/share/man/man1/cltfs.1").is_file()
    # mount(8) helpers point at the installed binary, not into DESTDIR
    for helper in ("sbin/mount.cltfs", "sbin/mount.fuse.cltfs"):
        assert os.readlink(dest / helper) == "/opt/cl/bin/cltfs"
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("cltfs ")
    r = subprocess.run(["make", "-s", "-C", REPO, "uninstall", "PREFIX=/opt/cl", "DESTDIR=%s" % dest],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not binary.exists()


def test_man_page_covers_every_option():
    page = open(os.path.join(REPO, "man", "cltfs.1")).read()
    for word in ("import", "stat", "verify", "store=", "cache_mb", "batch_samples", "batch_rows",
                 "dtype", "readahead", "threads", "read_ahead_kb", "fuse.cltfs", "CLTFS_STORE",
                 "--chunk-rows", "--target-offset", "--level", "EROFS", "EIO",
                 "pull", "hf://", "HF_ENDPOINT", "HF_TOKEN", "HF_HOME", "HF_HUB_CACHE",
                 "HF_HUB_OFFLINE", "CLTFS_HUB_RETRIES", ".incomplete", "refs/",
                 "share_zero_targets", "hub=", "capture=", "model=", "images=", "readahead_errors",
                 "--image-dir", "capture_ahead=", "samples.bin", "JSON Lines", "device=", "capture_batch=",
                 "capture_idle=", "--device", "--compress-threads", "CUDA_VISIBLE_DEVICES", "TORCH_DIR",
                 "gpu-check", "model_unloads", "handles", "opens", "n_targets=", "target_offset=",
                 "target_pad=", "--codec", "exp4", "--repair", "sample_reduce=", "sample_dtype=", "CLTFS_HUB_AHEAD_MB",
                 "readdirplus=", "readdirplus"):
        assert word.replace("-", "\\-") in page or word in page, word
    if shutil.which("groff"):
        r = subprocess.run(["groff", "-man", "-ww", "-z", os.path.join(REPO, "man", "cltfs.1")],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", r.stderr


def test_help_lists_every_mount_option(run_cltfs):
    out = run_cltfs("--help").stdout
    for opt in ("store=", "cache_mb=", "batch_samples=", "batch_rows=", "dtype=", "readahead=",
                "threads=", "read_ahead_kb=", "import", "stat", "verify", "pull", "hf://",
                "HF_TOKEN", "HF_HUB_OFFLINE", "device=", "capture_batch=", "capture_idle=", "--device",
                "--compress-threads", "handles", "n_targets=", "target_offset=", "target_pad=",
                "sample_reduce=", "sample_dtype="):
        assert opt in out, opt


def test_stat_json_numbers(stores, run_cltfs):
    imp = stores.get("s1_bf16")
    r = run_cltfs("stat", imp.store, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["chunks"] == st["chunks_needed"] > 0
    disk = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(imp.store) for f in fs)
    assert st["disk_bytes"] == disk
    assert 0 < st["ratio"] < 1 and abs(st["ratio"] - disk / st["materialized_bytes"]) < 1e-6


def test_stat_json_any_store_name(stores, run_cltfs, tmp_path):
    """The store's path is a JSON string however it is spelled: quotes,
    backslashes, control characters and non-ASCII are escaped."""
    name = 'we"ird\\st\tore é'
    dst = tmp_path / name
    shutil.copytree(stores.get("s1_bf16").store, dst)
    r = run_cltfs("stat", str(dst), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["store"] == str(dst)


def test_help_lists_the_tier_options(run_cltfs):
    out = run_cltfs("--help").stdout
    for opt in ("share_zero_targets", "hub=", "capture=", "model=", "images=", "capture_ahead="):
        assert opt in out, opt


def _bdi_readahead(mnt):
    dev = "%d:%d" % (os.major(os.stat(mnt).st_dev), os.minor(os.stat(mnt).st_dev))
    with open("/sys/class/bdi/%s/read_ahead_kb" % dev) as f:
        return int(f.read())


@pytest.mark.skipif(os.geteuid() != 0, reason="setting a mount's read_ahead_kb needs root")
def test_mount_raises_kernel_readahead(stores, mount):
    with mount(stores.get("s1_bf16").store) as m:
        assert _bdi_readahead(m.path) == 1024
    with mount(stores.get("s1_bf16").store, "read_ahead_kb=256") as m:
        assert _bdi_readahead(m.path) == 256


@needs_script
def test_import_progress_on_a_tty_only(tmp_path, trees, cltfs_bin):
    tree, _ = trees.get("s1_bf16")
    store = tmp_path / "store"
    # on a terminal: a progress line rewritten with \r, then the summary
    rc, out = on_tty(cltfs_bin, "import", store, tree, timeout=120)
    assert rc == 0, out
    assert "\rimport: batch" in out and "every value verified" in out, out
    # not on a terminal: no progress, only the summary
    r = subprocess.run([cltfs_bin, "import", str(tmp_path / "store2"), tree], capture_output=True, text=True)
    assert r.returncode == 0 and "import: batch" not in r.stderr + r.stdout
    assert r.stdout.startswith("imported ")
