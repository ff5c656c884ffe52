"""Shared pieces of the Python tools (bench, seed-experiment, soak; the
bash tools share tools/lib.sh): their flags, running commands, building
znbd (here or at another git revision), the corpus, starting servers, the
kernel's zram, and fio with its JSON read back."""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20


def log(tool, message):
    print(f"{tool}: {message}", file=sys.stderr, flush=True)


class ToolParser(argparse.ArgumentParser):
    """The tools' flags: GNU style (--seconds 10 or --seconds=10), no
    abbreviations; --help prints the tool's header (`header`, its docstring)
    and exits 0; a bad argument is one line on stderr and exit status 64."""

    def __init__(self, tool, header):
        super().__init__(prog=tool, add_help=False, allow_abbrev=False)
        self.header = header
        self.add_argument("-h", "--help", action="store_true")

    def parse_args(self, args=None, namespace=None):
        options = super().parse_args(args, namespace)
        if options.help:
            try:
                print(self.header.strip("\n"), flush=True)
            except BrokenPipeError:  # tools/bench --help | head
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        return options

    def error(self, message):
        message = message.replace("unrecognized arguments:", "unknown argument")
        print(f"{self.prog}: {message} (tools/{self.prog} --help)", file=sys.stderr, flush=True)
        sys.exit(64)


def run(command, timeout=600, check=True, **kwargs):
    """Runs `command` and returns its standard output; a non-zero exit is
    an error with the end of its standard error, unless `check` is off."""
    result = subprocess.run(command, timeout=timeout, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} within {seconds} s")


def wait_for_path(path, seconds=20):
    wait_for(lambda: os.path.exists(path), seconds, f"{path} did not appear")


def rss(pid):
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_znbd(products=("znbd",), tree=ROOT, scratch_path=None):
    """Builds the products (release) as tools/run does, in `tree` (a checkout
    of this repository; tools/setup is always this one's), in `scratch_path`
    when given (else the tree's .build); returns the binaries' folder."""
    swift = "swift build -c release" + (f" --scratch-path {scratch_path}" if scratch_path else "")
    builds = "".join(f"{swift} --product {product} >/dev/null && " for product in products)
    script = f"source {ROOT}/tools/setup >/dev/null && {builds}{swift} --show-bin-path"
    return run(["bash", "-c", script], cwd=tree, timeout=3600).strip().splitlines()[-1]


def git(*arguments, cwd=ROOT):
    return run(["git"] + list(arguments), cwd=cwd).strip()


def build_at_revision(revision, products, folder):
    """Builds the products (release) at git revision `revision` of this
    repository: a temporary detached worktree at FOLDER/tree, built with
    the scratch path FOLDER/build (kept between runs, so that only what
    changed is rebuilt), removed again after the build. This checkout's
    Package.resolved, when there is one, pins the same dependencies on both
    sides. Returns (the revision's full hash, the binaries' folder)."""
    commit = git("rev-parse", "--verify", f"{revision}^{{commit}}")
    tree, scratch = os.path.join(folder, "tree"), os.path.join(folder, "build")
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(tree):
        run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, check=False)
    run(["git", "worktree", "prune"], cwd=ROOT)
    run(["git", "worktree", "add", "--detach", "--force", tree, commit], cwd=ROOT)
    try:
        resolved = os.path.join(ROOT, "Package.resolved")
        if os.path.exists(resolved):
            with open(resolved) as source, open(os.path.join(tree, "Package.resolved"), "w") as copy:
                copy.write(source.read())
        return commit, build_znbd(products, tree=tree, scratch_path=scratch)
    finally:
        run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, check=False)


def corpus_file(mebibytes=128):
    """tools/corpus's file of real files, built once into tools/out."""
    path = run([os.path.join(ROOT, "tools/corpus"), "--mib", str(mebibytes)], cwd=ROOT).strip()
    return path if path.startswith("/") else os.path.join(ROOT, path)


# fio's data: 55% compressible per 4 KiB, a new buffer for every write.
COMPRESSIBLE = ["--buffer_compress_percentage=55", "--buffer_compress_chunk=4096", "--refill_buffers"]


def children_cpu_seconds():
    """User and system CPU time of every child waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid):
    """User and system CPU time of process `pid` so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fio(target_arguments, job_arguments, timeout):
    """Runs one fio job (group reporting over its numjobs); returns MiB/s,
    IOPS and p99 completion latency for reads and writes, and fio's own CPU
    seconds and wall time (the client's cost: with the kernel's zram this
    includes the compression, which runs in the submitting thread)."""
    cpu_before, wall_before = children_cpu_seconds(), time.monotonic()
    text = run(["fio", "--name=job", "--output-format=json", "--group_reporting"] + target_arguments + job_arguments,
               timeout=timeout)
    job = json.loads(text[text.index("{"):])["jobs"][0]
    figures = {"client_cpu_s": children_cpu_seconds() - cpu_before, "wall_s": time.monotonic() - wall_before}
    for side in ("read", "write"):
        if job[side]["io_bytes"] == 0:
            continue
        percentiles = job[side]["clat_ns"].get("percentile", {})
        figures[side] = {"MiBps": job[side]["bw_bytes"] / MIB, "iops": job[side]["iops"],
                         "p99_us": percentiles.get("99.000000", 0) / 1000, "bytes": job[side]["io_bytes"]}
    return figures


class Server:
    """A server process on a Unix socket: znbd or nbdkit."""

    def __init__(self, command, socket, control=None, state=None):
        self.socket, self.control, self.state = socket, control, state
        self.errors = tempfile.TemporaryFile(mode="w+")  # read back if the server dies at start
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=self.errors)
        for path in [socket] + ([control] if control else []):
            wait_for(lambda: os.path.exists(path) or self.process.poll() is not None, 20, f"{path} did not appear")
            if self.process.poll() is not None:
                self.errors.seek(0)
                raise RuntimeError(f"{' '.join(command)} exited {self.process.returncode}: "
                                   f"{self.errors.read().strip()[-2000:]}")

    @property
    def uri(self):
        return f"nbd+unix:///?socket={self.socket}"

    def fio_target(self):
        return ["--ioengine=nbd", f"--uri={self.uri}"]

    def cpu_seconds(self):
        return process_cpu_seconds(self.process.pid)

    def memory(self):
        figures = {"rss": rss(self.process.pid)}
        if self.control:
            stats = json.loads(run(["curl", "-s", "--unix-socket", self.control, "http://localhost/v1/stats"]))
            figures.update(compr=stats["compr_data_size"], used=stats["mem_used_total"])
        return figures

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=20)
        self.errors.close()
        if self.state:
            shutil.rmtree(self.state, ignore_errors=True)


def supports_state_dir(znbd):
    """Whether this znbd build keeps its disk in a state directory
    (--state-dir; builds before issue 24's work do not)."""
    return "--state-dir" in run([znbd, "serve", "--help"])


def znbd_server(binaries, scratch, size, arguments=()):
    """znbd on a fresh device: a state directory of its own on /dev/shm
    (the daemon's default placement, a tmpfs), removed at close, for builds
    that have one."""
    socket, control = os.path.join(scratch, "nbd.sock"), os.path.join(scratch, "control.sock")
    znbd = os.path.join(binaries, "znbd")
    state = None
    if supports_state_dir(znbd) and not any(a.startswith("--state-dir") for a in arguments):
        state = f"/dev/shm/znbd-bench-{os.getpid()}-{os.path.basename(scratch)}"
        shutil.rmtree(state, ignore_errors=True)
        arguments = list(arguments) + ["--state-dir", state]
    return Server([znbd, "serve", "--size", size, "--socket", socket, "--control", control] + list(arguments),
                  socket, control, state)


def znbd_memory_server(binaries, scratch, mebibytes, workers):
    """znbd's NBD server over a plain RAM device (`znbd-bench serve memory`):
    the protocol's cost without compression."""
    socket = os.path.join(scratch, "nbd.sock")
    return Server([os.path.join(binaries, "znbd-bench"), "serve", "memory", socket, str(mebibytes), str(workers)],
                  socket)


def nbdkit_server(scratch, size, allocator):
    socket = os.path.join(scratch, "nbdkit.sock")
    return Server(["nbdkit", "-f", "-U", socket, "memory", size, f"allocator={allocator}"], socket)


class KernelZRAM:
    """/dev/zram0 with lzo, driven by fio's libaio engine with direct I/O."""

    SYS = "/sys/block/zram0"

    def __init__(self, size):
        with open(f"{self.SYS}/disksize") as disksize:
            if int(disksize.read()) != 0:
                raise RuntimeError("/dev/zram0 is in use (disksize is set); not touching it")
        self.write("comp_algorithm", "lzo")
        self.write("disksize", size)

    @staticmethod
    def available():
        return os.geteuid() == 0 and os.path.exists(KernelZRAM.SYS)

    def write(self, name, value):
        with open(f"{self.SYS}/{name}", "w") as attribute:
            attribute.write(value)

    def fio_target(self):
        return ["--ioengine=libaio", "--direct=1", "--filename=/dev/zram0"]

    def cpu_seconds(self):
        """No process of its own: the kernel compresses in fio's threads."""
        return 0.0

    def mm_stat(self):
        with open(f"{self.SYS}/mm_stat") as mm_stat:
            return [int(field) for field in mm_stat.read().split()]

    def memory(self):
        fields = self.mm_stat()
        return {"compr": fields[1], "used": fields[2]}

    def close(self):
        self.write("reset", "1")
