"""End-to-end: capture as a Slurm job array.

The shard of `cltfs capture` taken from SLURM_ARRAY_TASK_* (and an explicit
--shard over them), `capture --status`, and tools/slurm/capture.sbatch
submitted as an array to a real single-node Slurm cluster started here
from the Debian packages (slurm-wlm, munge): one task cancelled mid-way
and requeued, then the store verified and every file of its mount compared
with a one-process capture's, byte for byte.

The cluster runs as root with private ports, state and a munge key under
a temporary folder, and advertises 4 GPUs that are character devices (the
script asks for one per task; the capture itself runs on the CPU).  The
test skips only when the Slurm or munge binaries are missing."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import describe
from s3server import BUCKET, have_s3rver
from test_capture import llava, run_init, run_capture, stat_json, verify_ok  # noqa: F401 (llava: a fixture)
from test_s3 import env_of as s3_env, make_s3, writes as s3_writes  # noqa: F401 (make_s3: a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH_SCRIPT = os.path.join(REPO, "tools", "slurm", "capture.sbatch")
ARRAY_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
              "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_JOB_ID")

# the array test: enough samples that a shard of 4, run 4 at once on two
# cores, lasts several seconds (the tiny model captures ~100 samples/s on
# one core, and a capture makes its batches durable about once a second)
ARRAY_SAMPLES, ARRAY_BATCH, ARRAY_TASKS = 800, 4, 4
ARRAY_TIMEOUT = 150


def env_with(**vars):
    """The environment with no Slurm array variable but vars."""
    env = {k: v for k, v in os.environ.items() if k not in ARRAY_VARS}
    env.update(vars)
    return env


def packs(store):
    d = os.path.join(store, "packs")
    return sorted(f[:-4] for f in os.listdir(d) if f.endswith(".idx"))


STATUS_LINE = re.compile(r"^(shard (\d+)/(\d+)|all|other writer (\S+)): (?:(\d+) chunks$|"
                         r"(\d+)/(\d+) batches, (\d+)/(\d+) samples, ([\d.]+)%(.*)$)")


def parse_status(text):
    """{"all": (b, B, s, S, pct), (i, n): (b, B, s, S, pct, packs), "other:W": chunks}"""
    out = {}
    for line in text.splitlines():
        m = STATUS_LINE.match(line)
        assert m, "capture --status: unexpected line %r in:\n%s" % (line, text)
        if m.group(4):
            out["other:" + m.group(4)] = int(m.group(5))
            continue
        nums = tuple(int(m.group(k)) for k in range(6, 10)) + (float(m.group(10)),)
        if m.group(1) == "all":
            out["all"] = nums
        else:
            out[(int(m.group(2)), int(m.group(3)))] = nums + (re.findall(r"([^\s(,]+): \d+ chunks", m.group(11)),)
    assert "all" in out, "capture --status: no line for all:\n" + text
    return out


def status(run_cltfs, store):
    r = run_cltfs("capture", "--status", store, timeout=60)
    assert r.returncode == 0, "capture --status failed: " + describe(r)
    return parse_status(r.stdout)


@pytest.fixture(scope="module")
def small_store(llava, run_cltfs, tmp_path_factory):
    """A float32 store of 6 samples made by init, nothing captured (tests copy it)."""
    store = str(tmp_path_factory.mktemp("slurm") / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--dtype", "float32", "--quiet")
    return store


def fresh(small_store, tmp_path):
    dst = str(tmp_path / "store")
    shutil.copytree(small_store, dst)
    return dst


# ------------------------------------------------- the array variables --

@pytest.mark.parametrize("vars,shard", [
    (dict(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2", SLURM_ARRAY_TASK_MIN="0"), 2),
    (dict(SLURM_ARRAY_TASK_ID="5", SLURM_ARRAY_TASK_COUNT="2", SLURM_ARRAY_TASK_MIN="5"), 1),   # --array=5-6
    (dict(SLURM_ARRAY_TASK_ID="11", SLURM_ARRAY_TASK_COUNT="2", SLURM_ARRAY_TASK_MIN="7",
          SLURM_ARRAY_TASK_STEP="4"), 2),                                                       # --array=7-11:4
], ids=["from0", "from5", "step4"])
def test_shard_from_array_variables(small_store, run_cltfs, tmp_path, vars, shard):
    store = fresh(small_store, tmp_path)
    r = run_capture(run_cltfs, store, env=env_with(**vars))
    first = r.stderr.splitlines()[0]
    assert first.startswith("cltfs: capture: shard %d/2 from SLURM_ARRAY_TASK_ID=%s " % (
        shard, vars["SLURM_ARRAY_TASK_ID"])), "first line: %r\n%s" % (first, describe(r))
    assert "SLURM_ARRAY_TASK_COUNT=2" in first, first
    host = socket.gethostname()
    assert packs(store) == ["%s-capture-%dof2" % (host, shard)], packs(store)
    st = status(run_cltfs, store)
    other = 3 - shard
    assert st[(shard, 2)][:5] == (3, 3, 3, 3, 100.0), st
    assert st[(shard, 2)][5] == ["%s-capture-%dof2" % (host, shard)], st
    assert st[(other, 2)] == (0, 3, 0, 3, 0.0, []), st
    assert st["all"] == (3, 6, 3, 6, 50.0), st
    # the other task of the array completes the store
    vars = dict(vars, SLURM_ARRAY_TASK_ID=str(int(vars["SLURM_ARRAY_TASK_ID"]) +
                                             int(vars.get("SLURM_ARRAY_TASK_STEP", "1")) * (other - shard)))
    run_capture(run_cltfs, store, "--quiet", env=env_with(**vars))
    assert status(run_cltfs, store)["all"] == (6, 6, 6, 6, 100.0)
    verify_ok(run_cltfs, store)
    st = stat_json(run_cltfs, store)
    assert st["chunks"] == st["chunks_needed"], st


def test_explicit_shard_wins(small_store, run_cltfs, tmp_path):
    store = fresh(small_store, tmp_path)
    env = env_with(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2", SLURM_ARRAY_TASK_MIN="0")
    r = run_capture(run_cltfs, store, "--shard", "1/3", env=env)
    assert r.stderr.startswith("cltfs: capture: --shard given, SLURM_ARRAY_TASK_ID=1 ignored\n"), describe(r)
    assert packs(store) == ["%s-capture-1of3" % socket.gethostname()], packs(store)
    st = status(run_cltfs, store)
    assert st[(1, 3)][:5] == (2, 2, 2, 2, 100.0) and st["all"][:2] == (2, 6), st
    # and --rows: the whole range asked for, no shard
    r = run_capture(run_cltfs, store, "--rows", "0:1", "--quiet", env=env)
    assert r.stderr == "", describe(r)
    # a bad variable is not even read when --shard is given
    r = run_capture(run_cltfs, store, "--shard", "3/3", "--quiet",
                    env=env_with(SLURM_ARRAY_TASK_ID="x", SLURM_ARRAY_TASK_COUNT="0"))
    assert status(run_cltfs, store)["all"][:2] == (4, 6)


@pytest.mark.parametrize("vars,named", [
    (dict(SLURM_ARRAY_TASK_ID="4", SLURM_ARRAY_TASK_COUNT="4", SLURM_ARRAY_TASK_MIN="0"), "SLURM_ARRAY_TASK_ID=4"),
    (dict(SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_COUNT="2", SLURM_ARRAY_TASK_MIN="1"), "SLURM_ARRAY_TASK_ID=0"),
    (dict(SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_COUNT="2", SLURM_ARRAY_TASK_MIN="1",
          SLURM_ARRAY_TASK_STEP="2"), "SLURM_ARRAY_TASK_ID=2"),
    (dict(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="0"), "SLURM_ARRAY_TASK_COUNT=0"),
    (dict(SLURM_ARRAY_TASK_ID="one", SLURM_ARRAY_TASK_COUNT="4"), "SLURM_ARRAY_TASK_ID=one"),
    (dict(SLURM_ARRAY_TASK_ID="-1", SLURM_ARRAY_TASK_COUNT="4"), "SLURM_ARRAY_TASK_ID=-1"),
    (dict(SLURM_ARRAY_TASK_ID="", SLURM_ARRAY_TASK_COUNT="4"), "SLURM_ARRAY_TASK_ID="),
    (dict(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="4x"), "SLURM_ARRAY_TASK_COUNT=4x"),
    (dict(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="4", SLURM_ARRAY_TASK_MIN="a"), "SLURM_ARRAY_TASK_MIN=a"),
    (dict(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="4", SLURM_ARRAY_TASK_STEP="0"), "SLURM_ARRAY_TASK_STEP=0"),
    (dict(SLURM_ARRAY_TASK_ID="1"), "SLURM_ARRAY_TASK_COUNT is not"),
    (dict(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="99999999999"), "SLURM_ARRAY_TASK_COUNT=99999999999"),
], ids=["past", "below-min", "off-step", "count0", "word", "negative", "empty", "count-junk", "min-junk",
        "step0", "no-count", "huge"])
def test_bad_array_variables(small_store, run_cltfs, tmp_path, vars, named):
    store = fresh(small_store, tmp_path)
    r = run_capture(run_cltfs, store, check=False, env=env_with(**vars))
    assert r.returncode == 2, describe(r)
    assert r.stderr.startswith("cltfs: capture: ") and named in r.stderr, describe(r)
    assert stat_json(run_cltfs, store)["chunks"] == 0
    assert packs(store) == []


# ------------------------------------------------------- capture --status --

def test_status_of_store_kinds(small_store, run_cltfs, tmp_path):
    store = fresh(small_store, tmp_path)
    assert status(run_cltfs, store) == {"all": (0, 6, 0, 6, 0.0)}
    run_capture(run_cltfs, store, "--rows", "0:1", "--quiet")
    st = status(run_cltfs, store)
    host = socket.gethostname()
    assert st["all"] == (1, 6, 1, 6, 16.7), st
    assert st["other:%s-capture" % host] > 0, st
    # a writer that found its pair held adds -<pid>; names no capture wrote
    # are writers of no shard, however many shards they claim
    for name in ("h-capture-2of2-77", "odd-capture-5of999999999999", "odd-capture-0of2", "odd-capture-xof2"):
        open(os.path.join(store, "packs", name + ".idx"), "w").close()
    st = status(run_cltfs, store)
    assert st[(2, 2)] == (0, 3, 0, 3, 0.0, ["h-capture-2of2-77"]) and st[(1, 2)][5] == [], st
    for name in ("odd-capture-5of999999999999", "odd-capture-0of2", "odd-capture-xof2"):
        assert st["other:" + name] == 0, st
    for bad, code in ((str(tmp_path / "nothing"), 1), (str(tmp_path), 1)):
        r = run_cltfs("capture", "--status", bad)
        assert r.returncode == code and r.stderr.startswith("cltfs: ") and bad in r.stderr, describe(r)
    for args in ((), ("--shard", "1/2", store), ("--rows", "0:1", store), (store, store)):
        r = run_cltfs("capture", "--status", *args)
        assert r.returncode == 2 and "--status" in r.stderr, describe(r)
    r = run_cltfs("--help")
    assert "cltfs capture --status STORE" in r.stdout and "SLURM_ARRAY_TASK_ID" in r.stdout, describe(r)


def test_status_beside_a_writer(small_store, run_cltfs, tmp_path):
    """--status opens no writer: with a capture's pack locked (as a running
    capture holds it) it reads the index and creates nothing; the capture
    that comes next still gets its own pack, not a <pid> one."""
    import fcntl
    store = fresh(small_store, tmp_path)
    run_capture(run_cltfs, store, "--shard", "1/2", "--quiet")
    host = socket.gethostname()
    pack = os.path.join(store, "packs", "%s-capture-2of2.pack" % host)
    before = sorted(os.listdir(os.path.join(store, "packs")))
    with open(os.path.join(store, "packs", "%s-capture-1of2.pack" % host), "rb+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st = status(run_cltfs, store)
    assert sorted(os.listdir(os.path.join(store, "packs"))) == before
    assert st[(1, 2)][:5] == (3, 3, 3, 3, 100.0), st
    run_capture(run_cltfs, store, "--shard", "2/2", "--quiet")
    assert os.path.exists(pack), os.listdir(os.path.join(store, "packs"))
    assert status(run_cltfs, store)["all"] == (6, 6, 6, 6, 100.0)


# ---------------------------------------------------- a Slurm cluster --

SLURM_BINS = ("slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scontrol", "scancel", "munged")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """slurmctld + slurmd + munged on this machine, in a folder of their own."""

    def __init__(self, bins):
        self.bins = bins
        # short: the munge socket's path must fit a sockaddr_un
        self.dir = tempfile.mkdtemp(prefix="cltfs-slurm-")
        self.procs = []
        self.conf = os.path.join(self.dir, "slurm.conf")
        self.env = env_with(SLURM_CONF=self.conf)

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def start(self):
        for d in ("state", "spool", "log"):
            os.makedirs(self.path(d))
        with open(self.path("munge.key"), "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(self.path("munge.key"), 0o400)
        self._spawn("munged", "-F", "--force", "--key-file", self.path("munge.key"),
                    "--socket", self.path("munge.sock"), "--pid-file", self.path("munged.pid"),
                    "--log-file", self.path("log", "munged.log"), "--seed-file", self.path("munged.seed"))
        self._wait(lambda: os.path.exists(self.path("munge.sock")), "munged's socket")
        self._write_conf()
        self._spawn("slurmctld", "-D", "-f", self.conf)
        self._spawn("slurmd", "-D", "-f", self.conf)
        self._wait(self._node_up, "the node idle in sinfo")

    def _spawn(self, name, *args):
        log = open(self.path("log", name + ".out"), "w")
        self.procs.append(subprocess.Popen([self.bins[name], *args], stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=self.env))
        log.close()

    def _wait(self, ok, what, timeout=30):
        t0 = time.monotonic()
        while not ok():
            for p in self.procs:
                assert p.poll() is None, "%s exited %s before %s:\n%s" % (
                    p.args[0], p.returncode, what, self.logs())
            assert time.monotonic() - t0 < timeout, "no %s after %ds:\n%s" % (what, timeout, self.logs())
            time.sleep(0.2)

    def _node_up(self):
        r = self.run("sinfo", "-h", "-o", "%t", check=False)
        return r.returncode == 0 and r.stdout.strip() in ("idle", "mix", "alloc")

    def _write_conf(self):
        host = socket.gethostname().split(".")[0]
        gpus = []
        for i in range(4):
            # character devices, as the GPU plugin wants (the null device's numbers)
            p = self.path("gpu%d" % i)
            try:
                os.mknod(p, 0o600 | 0o020000, os.makedev(1, 3))
            except OSError:
                open(p, "w").close()   # slurmd logs an error and still counts it
            gpus.append(p)
        with open(self.path("gres.conf"), "w") as f:
            f.write("NodeName=%s Name=gpu File=%s\n" % (host, self.path("gpu[0-3]")))
        conf = {
            "ClusterName": "cltfstest",
            "SlurmctldHost": "%s(127.0.0.1)" % host,
            "SlurmUser": "root", "SlurmdUser": "root",
            "SlurmctldPort": _free_port(), "SlurmdPort": _free_port(),
            "AuthType": "auth/munge", "CredType": "cred/munge",
            # cred_expire is also how long a requeued job waits (default 120 s)
            "AuthInfo": "socket=%s,cred_expire=5" % self.path("munge.sock"),
            "StateSaveLocation": self.path("state"), "SlurmdSpoolDir": self.path("spool"),
            "SlurmctldPidFile": self.path("slurmctld.pid"), "SlurmdPidFile": self.path("slurmd.pid"),
            "SlurmctldLogFile": self.path("log", "slurmctld.log"),
            "SlurmdLogFile": self.path("log", "slurmd.log"),
            "ProctrackType": "proctrack/linuxproc", "TaskPlugin": "task/none",
            "SchedulerType": "sched/builtin", "SchedulerParameters": "sched_interval=1",
            "SelectType": "select/cons_tres", "SelectTypeParameters": "CR_Core",
            "ReturnToService": 2, "MpiDefault": "none", "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none", "JobCompType": "jobcomp/none",
            # 4 CPUs whatever the machine has: the 4 tasks run at once
            "SlurmdParameters": "config_overrides",
            "GresTypes": "gpu",
            "KillWait": 5,
        }
        with open(self.conf, "w") as f:
            for k, v in conf.items():
                f.write("%s=%s\n" % (k, v))
            f.write("NodeName=%s NodeAddr=127.0.0.1 CPUs=4 RealMemory=4000 Gres=gpu:4 State=UNKNOWN\n" % host)
            f.write("PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n")

    def run(self, cmd, *args, check=True, timeout=30):
        r = subprocess.run([self.bins[cmd], *args], capture_output=True, text=True, env=self.env,
                           stdin=subprocess.DEVNULL, timeout=timeout)
        if check:
            assert r.returncode == 0, "%s %s: %s\n%s" % (cmd, " ".join(args), describe(r), self.logs())
        return r

    def states(self, job):
        """{task: state} of an array job, finished tasks included."""
        r = self.run("squeue", "-h", "-a", "-t", "all", "-r", "-j", str(job), "-o", "%i %T", check=False)
        out = {}
        for line in r.stdout.splitlines():
            jid, state = line.split()
            if "_" in jid and "[" not in jid:
                out[int(jid.split("_")[1])] = state
        if not out or r.returncode != 0:   # finished and gone from squeue: scontrol remembers
            r = self.run("scontrol", "show", "job", str(job), "-o", check=False)
            for line in r.stdout.splitlines():
                t = re.search(r"ArrayTaskId=(\d+) ", line)
                s = re.search(r"JobState=(\S+)", line)
                if t and s:
                    out[int(t.group(1))] = s.group(1)
        return out

    def logs(self):
        out = []
        for name in sorted(os.listdir(self.path("log"))):
            with open(self.path("log", name), errors="replace") as f:
                lines = f.read().splitlines()[-15:]
            out.append("--- %s\n%s" % (name, "\n".join(lines)))
        return "\n".join(out)

    def stop(self):
        """Cancel every job, then the daemons in reverse order: always run."""
        try:
            self.run("scancel", "--user=root", check=False, timeout=10)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 15:
                r = self.run("squeue", "-h", check=False, timeout=10)
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(0.5)
        except (OSError, subprocess.SubprocessError):
            pass
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(request, cltfs_bin):
    bins = {b: shutil.which(b) or shutil.which(b, path="/usr/sbin:/sbin:/usr/bin") for b in SLURM_BINS}
    missing = [b for b, p in bins.items() if not p]
    if missing:
        pytest.skip("no Slurm here (missing %s: apt-get install slurm-wlm munge)" % ", ".join(missing))
    c = Cluster(bins)
    request.addfinalizer(c.stop)
    c.start()
    # the script finds cltfs on PATH, as on a cluster; sbatch passes the
    # submitter's environment on (--export=ALL)
    c.env["PATH"] = os.path.dirname(cltfs_bin) + ":" + c.env.get("PATH", "")
    c.env["CLTFS_CAPTURE_ARGS"] = "--threads 1"
    return c


def submit(cluster, tasks, logs, store, *opts):
    """sbatch --array=0-(tasks-1) of the shipped script; the job id."""
    os.makedirs(logs, exist_ok=True)
    r = cluster.run("sbatch", "--parsable", "--array=0-%d" % (tasks - 1), "--output=%s/%%A_%%a.log" % logs,
                    "--chdir", logs, *opts, SBATCH_SCRIPT, store)
    return int(r.stdout.strip().split(";")[0])


def test_capture_array_without_gres(small_store, run_cltfs, cluster, tmp_path):
    """A cluster whose GPUs are not a gres (or a CPU run): --gres=none on
    sbatch's command line overrides the script's #SBATCH --gres=gpu:1."""
    store = fresh(small_store, tmp_path)
    job = submit(cluster, 3, str(tmp_path / "logs"), store, "--gres=none")
    t0 = time.monotonic()
    _wait_tasks(cluster, job, lambda s: len(s) == 3 and all(v == "COMPLETED" for v in s.values()),
                "every task completed", t0)
    st = status(run_cltfs, store)
    assert st["all"] == (6, 6, 6, 6, 100.0), st
    host = socket.gethostname()
    assert [st[(i, 3)][5] for i in (1, 2, 3)] == [["%s-capture-%dof3" % (host, i)] for i in (1, 2, 3)], st
    verify_ok(run_cltfs, store)
    shown = cluster.run("scontrol", "show", "job", str(job), "-o").stdout
    assert not re.search(r"gres[:/]gpu", shown), shown


def test_capture_array_pushes_to_s3(small_store, run_cltfs, cluster, tmp_path, make_s3, mount):
    """CLTFS_CAPTURE_ARGS="--push s3://..." makes every task of the array
    push its shard's pairs as it goes and at its end: the prefix then holds
    each shard's pairs, <host>-capture-<I>of<N>-<seq>, the manifest after
    the first pack, and the store pulled from it verifies and serves every
    view as the local store does."""
    if not have_s3rver():
        pytest.skip("s3rver not installed (make deps installs it)")
    s3 = make_s3()
    url = "s3://%s/array" % BUCKET
    store = fresh(small_store, tmp_path)
    saved = dict(cluster.env)
    cluster.env.update({k: v for k, v in s3_env(tmp_path, s3).items() if k.startswith(("AWS_", "CLTFS_HUB"))})
    cluster.env["CLTFS_CAPTURE_ARGS"] = "--threads 1 --push %s --push-every 0 --push-min-mb 0" % url
    try:
        job = submit(cluster, 3, str(tmp_path / "logs"), store, "--gres=none")
        _wait_tasks(cluster, job, lambda s: len(s) == 3 and all(v == "COMPLETED" for v in s.values()),
                    "every task completed", time.monotonic())
    finally:
        cluster.env.clear()
        cluster.env.update(saved)
    assert status(run_cltfs, store)["all"] == (6, 6, 6, 6, 100.0)
    keys = [e["key"] for e in s3_writes(s3)]
    pairs = {k for k in keys if k.endswith(".idx")}
    host = socket.gethostname()
    for i in (1, 2, 3):
        assert any(re.search(r"/packs/%s-capture-%dof3-\d+\.idx$" % (host, i), k) for k in pairs), keys
    assert min(i for i, k in enumerate(keys) if k.endswith(".pack")) < keys.index("array/cltfs.json"), keys
    env = s3_env(tmp_path, s3)
    pulled = str(tmp_path / "pulled")
    r = run_cltfs("pull", url, pulled, env=env, timeout=120)
    assert r.returncode == 0, describe(r)
    verify_ok(run_cltfs, pulled)
    with mount(pulled) as m, mount(store) as ml:
        assert _views(m) == _views(ml)


def _views(m):
    files = m.files()
    out = {}
    for rel in files:
        with open(m.p(rel), "rb") as f:
            out[rel] = f.read()
    return out


# Its C paths (a shard from the array's variables, --status, a resume where
# the pack ends) run under ASan in the tests above and test_capture.py's
# test_killed_capture_resumes; here they run under a real Slurm.
@pytest.mark.plain_only
def test_capture_array_requeued(llava, cltfs_bin, run_cltfs, cluster, tmp_path, mount):
    """sbatch --array=0-3 of tools/slurm/capture.sbatch; the first task seen
    with some but not all of its batches durable is cancelled, and
    requeued: it resumes where its pack ends.  The store then verifies
    and its mount equals a one-process capture's, file for file."""
    ds = llava.dataset(ARRAY_SAMPLES)
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), ds, "--dtype", "float32", "--batch-samples", str(ARRAY_BATCH),
             "--quiet")
    clean = str(tmp_path / "clean")
    shutil.copytree(store, clean)
    n_batches = ARRAY_SAMPLES // ARRAY_BATCH
    logs = str(tmp_path / "logs")
    t0 = time.monotonic()
    job = submit(cluster, ARRAY_TASKS, logs, store)
    shown = cluster.run("scontrol", "show", "job", str(job), "-o").stdout
    assert re.search(r"gres[:/]gpu[:=]1", shown), "the array did not ask for a GPU a task: " + shown
    # watch the array as a user would, and catch a task mid-way
    victim, seen = None, None
    while victim is None and time.monotonic() - t0 < ARRAY_TIMEOUT:
        st = status(run_cltfs, store)
        for (i, n), v in sorted((k, v) for k, v in st.items() if isinstance(k, tuple)):
            assert n == ARRAY_TASKS, st
            if 0 < v[0] < v[1]:
                victim, seen = i - 1, v
                cluster.run("scancel", "%d_%d" % (job, victim))
                break
        if all(s in ("COMPLETED", "FAILED", "CANCELLED") for s in cluster.states(job).values()):
            break
        time.sleep(0.05)
    assert victim is not None, "no task caught mid-way (%.0fs): %s\n%s" % (
        time.monotonic() - t0, cluster.states(job), cluster.logs())
    wait_for = lambda ok, what: _wait_tasks(cluster, job, ok, what, t0)  # noqa: E731
    wait_for(lambda s: s.get(victim) == "CANCELLED", "task %d cancelled" % victim)
    cut = status(run_cltfs, store)[(victim + 1, ARRAY_TASKS)]
    assert 0 < cut[0] < cut[1], "task %d was cancelled with %s of its batches stored (seen: %s)" % (
        victim, cut, seen)
    cluster.run("scontrol", "requeue", "%d_%d" % (job, victim))
    wait_for(lambda s: len(s) == ARRAY_TASKS and all(v == "COMPLETED" for v in s.values()),
             "every task completed")
    took = time.monotonic() - t0
    with open(os.path.join(logs, "%d_%d.log" % (job, victim)), errors="replace") as f:
        log = f.read()
    # the log is appended to (--open-mode=append): both runs, the second resumed
    runs = re.findall(r"cltfs: capture: shard (\d+)/(\d+) from SLURM_ARRAY_TASK_ID=(\d+)", log)
    assert runs == [(str(victim + 1), str(ARRAY_TASKS), str(victim))] * 2, log
    done = re.search(r"capture: (\d+) of (\d+) batches captured", log)
    assert done and int(done.group(1)) == cut[1] - cut[0] and int(done.group(2)) == cut[1], \
        "the requeued task did not resume where its pack ended (%s stored at the cancel):\n%s" % (cut, log)
    st = status(run_cltfs, store)
    assert st["all"] == (n_batches, n_batches, ARRAY_SAMPLES, ARRAY_SAMPLES, 100.0), st
    host = socket.gethostname()
    for i in range(1, ARRAY_TASKS + 1):
        assert st[(i, ARRAY_TASKS)][5] == ["%s-capture-%dof%d" % (host, i, ARRAY_TASKS)], st
    verify_ok(run_cltfs, store)
    run_capture(run_cltfs, clean, "--quiet", "--threads", "1", env=env_with())
    with mount(store) as m:
        got = _views(m)
        assert m.stats()["chunks"]["capture"] == 0
    with mount(clean) as m:
        want = _views(m)
    assert sorted(got) == sorted(want) and len(got) >= 2 * n_batches, (len(got), len(want))
    diff = [rel for rel in want if got[rel] != want[rel]]
    assert not diff, "%d of %d files of the array's store differ from a one-process capture's: %s" % (
        len(diff), len(want), diff[:5])
    print("measured: array of %d tasks over %d samples in %.1f s (one requeued after %d of %d batches), "
          "%d files equal" % (ARRAY_TASKS, ARRAY_SAMPLES, took, cut[0], cut[1], len(want)))


def _wait_tasks(cluster, job, ok, what, t0):
    while True:
        s = cluster.states(job)
        if ok(s):
            return s
        assert time.monotonic() - t0 < ARRAY_TIMEOUT, "%s: not after %.0fs: %s\n%s" % (
            what, time.monotonic() - t0, s, cluster.logs())
        time.sleep(0.2)
