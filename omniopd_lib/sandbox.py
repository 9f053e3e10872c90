"""The sandboxed checker: a program's verdict against its tests, the program in a process that cannot give it.

check() runs each program in its own process (`python -I -S -B` on this file, which imports only the standard
library): a fresh temporary folder as working directory; a wall-clock limit that kills the whole process group;
resource limits (address space, CPU seconds, file size, which also caps stdout and stderr, no core files, few
processes); stdin closed or fed from a file; and an audit hook (PEP 578) that refuses, from Python, new
processes, signals, sockets, ctypes and any write outside the folder. Run as root, the child also leaves the
network (a new network namespace) and drops to an unused user id of its own, so the kernel enforces the process
limit and the file permissions, and after each run every process left with that user id is killed.

It is not a security boundary against a determined attacker: native code (an extension module) gets past the
audit hook; without root, the kernel holds only the resource limits, and a process that leaves the process
group can outlive the check; the program can read what its user can read. For untrusted code, run the whole
training inside a container with no network, e.g.
    docker run --network none --pids-limit 512 --memory 32g --read-only --tmpfs /tmp IMAGE python omniopd.py ...
"""

import concurrent.futures
import dataclasses
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path


# ----------------------------------------------------------------------------
# The checker, in the trainer's process

@dataclasses.dataclass
class Limits:
    seconds: float = 5.0       # wall clock, per program run
    memory_mb: int = 1024      # address space
    output_kb: int = 1024      # largest file the program may write, stdout and stderr included
    processes: int = 32        # processes of the sandbox user (enforced by the kernel when run as root)
    python_guard: bool = True  # refuse processes, sockets and writes outside the folder from Python (tests turn
                               # it off to show what the kernel-level limits hold alone)
    private_scratch: bool = True   # as root: its own /tmp, /dev/shm, /var/tmp (tests turn it off to show what the
                                   # audit hook holds alone)
    namespaces: bool = True        # new PID and network namespaces where the system allows (tests turn it off to
                                   # show what holds on a system without unprivileged user namespaces)


@dataclasses.dataclass
class Verdict:
    passed: bool      # every test passed
    fraction: float   # share of the test units that passed
    reason: str       # "passed", or why not: "time limit", "memory limit", "AssertionError ...", ...


SANDBOX_UID_BASE = 1_900_000_000   # each check in flight runs as its own unused user id (root only)
_free_slots = []                   # slot numbers of finished checks, for the next ones to reuse
_slots_in_use = 0
_slots_lock = threading.Lock()


def take_slot() -> int:
    """The smallest free slot: as many user ids as checks run at once, each used by one check at a time."""
    global _slots_in_use
    with _slots_lock:
        if _free_slots:
            return _free_slots.pop(_free_slots.index(min(_free_slots)))
        _slots_in_use += 1
        return _slots_in_use - 1


def give_back_slot(slot: int) -> None:
    with _slots_lock:
        _free_slots.append(slot)


def check(program: str, tests: dict, limits: Limits = Limits()) -> Verdict:
    """Run the program against its tests in the sandbox. Assert tests run in one process, each unit in turn;
    stdin/stdout tests run the program once per case, stopping at the first failure."""
    if "io" in tests:
        cases = tests["io"]
        if not cases:
            return Verdict(False, 0.0, "no tests")
        for number, (stdin, expected) in enumerate(cases):
            outcome = run_sandboxed(program, [], stdin, limits)
            if outcome.reason != "passed":
                return Verdict(False, number / len(cases), outcome.reason)
            if normalize_output(outcome.stdout) != normalize_output(expected):
                return Verdict(False, number / len(cases), f"wrong output on test {number + 1}")
        return Verdict(True, 1.0, "passed")
    units = tests.get("asserts") or []
    if not units:
        return Verdict(False, 0.0, "no tests")
    outcome = run_sandboxed(program, units, None, limits)
    fraction = outcome.units_passed / len(units)
    return Verdict(outcome.reason == "passed" and outcome.units_passed == len(units), fraction, outcome.reason)


def check_many(programs: list[str], tests: list[dict], limits: Limits = Limits(), workers: int = 2) -> list[Verdict]:
    """check() for each (program, tests) pair, `workers` sandboxes at a time, results in order."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda pair: check(pair[0], pair[1], limits), zip(programs, tests)))


def normalize_output(text: str) -> list[str]:
    """Output compared line by line without trailing spaces or trailing blank lines."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


@dataclasses.dataclass
class Outcome:
    reason: str
    units_passed: int
    stdout: str


def run_sandboxed(program: str, units: list[str], stdin, limits: Limits) -> Outcome:
    """One sandboxed check. The program runs in one process; the test units (asserts) run in another, the judge,
    which calls the program's functions through a pipe and gets back plain data only (run_program, judge). The
    verdict comes from the judge and from the supervisor that waits for both, over a pipe that the program's
    process closed before the program ran: nothing the program does in its own process can report a pass.
    The tests reach the judge through a pipe too, so the program cannot read them. stdin/stdout problems need no
    judge: the program's output is compared here."""
    # imported here, not at the top: the sandbox's child runs this file, and a loaded _posixsubprocess would hand a
    # program a way to start processes that raises no audit event (guard refuses its import)
    import subprocess
    slot = take_slot()
    root = os.geteuid() == 0
    uids = [SANDBOX_UID_BASE + 2 * slot, SANDBOX_UID_BASE + 2 * slot + 1] if root else [None, None]
    folder = Path(tempfile.mkdtemp(prefix="omniopd-check-"))
    works = [folder / "work", folder / "judge"]
    # sockets, not pipes: a process of the same user can open /proc/PID/fd/N of a pipe again, for writing too,
    # wherever the holder is dumpable (this process is), and forge results or read the tests; a socket cannot be
    tests_write, tests_read = (end.detach() for end in socket.socketpair())
    results_read, results_write = (end.detach() for end in socket.socketpair())
    try:
        for work, uid in zip(works, uids):
            work.mkdir()
            if root:
                os.chown(work, uid, uid)
        if root:
            os.chmod(folder, 0o711)
        job = {"program": program, "judged": stdin is None, "uids": uids, "works": [str(w) for w in works],
               "limits": dataclasses.asdict(limits), "tests_fd": tests_read, "results_fd": results_write}
        (folder / "job.json").write_text(json.dumps(job))
        os.chmod(folder / "job.json", 0o600)
        (folder / "stdin").write_text(stdin or "")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(works[0]), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        with open(folder / "stdin", "rb") as stdin_file, open(folder / "stdout", "wb") as out, \
                open(folder / "stderr", "wb") as err:
            child = subprocess.Popen([sys.executable, "-I", "-S", "-B", str(Path(__file__).resolve()), str(folder / "job.json")],
                                     stdin=stdin_file if stdin is not None else subprocess.DEVNULL, stdout=out,
                                     stderr=err, cwd=works[0], env=env, start_new_session=True,
                                     pass_fds=(tests_read, results_write))
            os.close(tests_read)
            os.close(results_write)
            tests_read = results_write = None
            # each thread owns its end of a pipe from here on, and closes it
            feeder = threading.Thread(target=write_all, args=(tests_write, json.dumps(units).encode()), daemon=True)
            lines = []
            reader = threading.Thread(target=read_lines, args=(results_read, lines), daemon=True)
            tests_write = results_read = None
            feeder.start()
            reader.start()
            try:
                child.wait(timeout=limits.seconds + 1.0)   # + 1 s: the interpreter's own start-up
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            kill_group(child.pid)
            child.wait()
            wait_until_gone(child.pid, uids)
            reader.join(timeout=5.0)
        return read_outcome(folder, lines, child.returncode, timed_out, limits, judged=stdin is None)
    finally:
        for fd in (tests_read, tests_write, results_write, results_read):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        shutil.rmtree(folder, ignore_errors=True)
        give_back_slot(slot)


def write_all(fd: int, data: bytes) -> None:
    """The tests into the judge's pipe, then end of file (the judge may have died: then nothing more)."""
    try:
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(data)
    except OSError:
        pass


def read_lines(fd: int, lines: list, limit: int = 1 << 20) -> None:
    """The results pipe's lines, until every writer is gone; at most `limit` bytes are kept."""
    kept = bytearray()
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            kept += chunk[:max(0, limit - len(kept))]
    lines += kept.decode("utf-8", errors="replace").splitlines()


def kill_group(pgid: int) -> None:
    """SIGKILL to the child's whole process group: the program and anything it started."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_until_gone(pgid: int, uids, seconds: float = 5.0) -> None:
    """Return only once no live process of this check is left: none in its process group and, as root, none
    running as its user ids (the namespace's processes die with its init, but not at once). Linux's /proc."""
    deadline = time.monotonic() + seconds
    uids = {uid for uid in uids if uid is not None}
    while Path("/proc").is_dir() and time.monotonic() < deadline:
        alive = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as handle:
                    state, _, group = handle.read().rsplit(")", 1)[1].split()[:3]
                if state != "Z" and (int(group) == pgid or entry.stat().st_uid in uids):
                    alive.append(int(entry.name))
            except (OSError, ValueError):
                continue   # the process ended while we looked
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


PROGRAM_GONE = "exited before its tests finished"


def read_outcome(folder: Path, lines: list[str], returncode: int, timed_out: bool, limits: Limits,
                 judged: bool) -> Outcome:
    """What happened, from the judge's and the supervisor's report lines, and, for a stdin program, its exit and
    its output."""
    stdout = read_capped(folder / "stdout", limits.output_kb * 1024)
    stderr_tail = read_capped(folder / "stderr", limits.output_kb * 1024)[-2000:]
    reports = []
    for line in lines:
        try:
            report = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(report, dict):
            reports.append(report)
    ended = next((r["program"] for r in reports if isinstance(r.get("program"), dict)), {})
    signal_number = ended.get("signal") if not ended.get("stopped_by_judge") else None
    units_passed = len({r["unit"] for r in reports if r.get("unit") is not None and r.get("ok") is True})
    failed = next((r for r in reports if r.get("ok") is False), None)
    done = any(r.get("done") for r in reports)
    if timed_out:
        reason = "time limit"
    elif signal_number == signal.SIGXFSZ:
        reason = "output limit"
    elif signal_number == signal.SIGXCPU:
        reason = "time limit (CPU)"
    elif judged and failed is not None and not (signal_number and failed.get("error") == PROGRAM_GONE):
        reason = str(failed.get("error", "failed"))
    elif signal_number:
        reason = "killed" if signal_number == signal.SIGKILL else f"killed by signal {signal.Signals(signal_number).name}"
    elif judged:
        reason = "passed" if done else PROGRAM_GONE
    elif "MemoryError" in stderr_tail:
        reason = "memory limit"
    elif not ended:
        reason = PROGRAM_GONE if returncode == 0 else f"exit status {returncode}"
    elif ended.get("exit"):
        said = [line[len(REASON_MARK):] for line in stderr_tail.splitlines() if line.startswith(REASON_MARK)]
        reason = said[-1] if said else f"exit status {ended['exit']}"
    else:
        reason = "passed"
    return Outcome(reason, units_passed, stdout)


def read_capped(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


# ----------------------------------------------------------------------------
# The child: this file run as `python -I -S -B codetask.py job.json`. Only the standard library is imported.

# modules imported before the program drops its privileges: an unprivileged user may not be able to read the
# interpreter's own folder (a Python under /root), and these are what solutions commonly import. socket is
# among them so that what stops a connection is the network namespace and the audit hook, not a missing file.
PRELOADED = ("abc array base64 binascii bisect calendar cmath collections collections.abc copy dataclasses datetime "
             "decimal enum fractions functools hashlib heapq io itertools json math numbers operator queue random "
             "re socket sqlite3 statistics string struct sys textwrap time typing unicodedata zlib").split()
REASON_MARK = "sandbox: "   # a stdin program's last stderr line when it fails, so its reason is readable


def sandbox_child(job_path: str) -> None:
    """The sandbox's first process. It enters new PID and network namespaces where it can, then forks the
    namespace's init, the supervisor. When the init exits, the kernel kills every process left in the
    namespace, however it was started, so nothing the program starts outlives the check."""
    import importlib
    job = json.loads(Path(job_path).read_text())
    no_dumps()   # no process of the check (same user, without root) may open another's /proc files or descriptors
    for module in PRELOADED:   # before /tmp is replaced: a Python installed under it must still import them
        importlib.import_module(module)
    scratch = job["limits"]["private_scratch"] and job["uids"][0] is not None
    if job["limits"]["namespaces"] and enter_namespaces(as_root=job["uids"][0] is not None, folder=str(Path(job_path).resolve().parent) if scratch else None):
        init = os.fork()
        if init:
            os._exit(os.waitstatus_to_exitcode(os.waitpid(init, 0)[1]) & 0xFF)
    supervise(job)
    os._exit(0)


def supervise(job: dict) -> None:
    """Fork the program's process and, for assert tests, the judge; wait for them; report how the program ended.
    Once the judge is done, the program is stopped; a program that ends first has ended before its tests did."""
    results = os.fdopen(job["results_fd"], "w", buffering=1)
    to_program, from_program = os.pipe(), os.pipe()
    program = os.fork()
    if program == 0:
        for fd in (job["tests_fd"], job["results_fd"], to_program[1], from_program[0]):
            os.close(fd)
        run_program(job, to_program[0], from_program[1])
        flush_and_exit(0)
    judge = None
    if job["judged"]:
        judge = os.fork()
        if judge == 0:
            os.close(to_program[0])
            os.close(from_program[1])
            run_judge(job, results, from_program[0], to_program[1])
            os._exit(0)
    for fd in (*to_program, *from_program, job["tests_fd"]):
        os.close(fd)
    pending, stopped = {program, judge} - {None}, False
    while pending:
        try:
            pid, status = os.waitpid(-1, 0)   # as the namespace's init, orphans are reaped here too
        except ChildProcessError:
            break
        pending.discard(pid)
        if pid == program:
            ended = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)}
            results.write(json.dumps({"program": {**ended, "stopped_by_judge": stopped}}) + "\n")
        if pid == judge and program in pending:
            stopped = True
            os.kill(program, signal.SIGKILL)
        elif pid == program and judge in pending:
            if judge_ends_soon(judge):
                pending.discard(judge)
            else:   # a process the program started holds its pipe open: the judge would wait for ever
                os.kill(judge, signal.SIGKILL)


def judge_ends_soon(judge: int, seconds: float = 1.0) -> bool:
    """Whether the judge ends within `seconds` (reading what the program last sent) now that the program has."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if os.waitpid(judge, os.WNOHANG)[0] == judge:
                return True
        except ChildProcessError:
            return True
        time.sleep(0.005)
    return False


def set_limits_and_drop(job: dict, which: int) -> None:
    """Resource limits, the modules solutions use, then (as root) the sandbox user `which` (0: the program's,
    1: the judge's), and its own working folder."""
    import importlib
    import resource
    limits = job["limits"]
    for name, value in ((resource.RLIMIT_AS, limits["memory_mb"] * 1024 * 1024),
                        (resource.RLIMIT_CPU, int(limits["seconds"]) + 1),
                        (resource.RLIMIT_FSIZE, limits["output_kb"] * 1024), (resource.RLIMIT_CORE, 0),
                        (resource.RLIMIT_NPROC, limits["processes"])):
        resource.setrlimit(name, (value, value))
    for module in PRELOADED:
        importlib.import_module(module)
    uid = job["uids"][which]
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    os.chdir(job["works"][which])


def run_program(job: dict, requests_fd: int, replies_fd: int) -> None:
    """The program's process: run the program; for assert tests, then answer the judge's requests (call a
    function, read a name) until it is done. It holds no way to report a verdict."""
    channel = Channel(requests_fd, replies_fd)
    set_limits_and_drop(job, 0)

    def failed(reason: str) -> None:
        if job["judged"]:
            channel.send(["failed", reason])
        else:
            print(REASON_MARK + reason, file=sys.stderr)
            flush_and_exit(1)

    try:
        compiled = compile(job["program"], "<program>", "exec")
    except (SyntaxError, ValueError) as error:
        return failed(f"does not parse: {getattr(error, 'msg', error)} (line {getattr(error, 'lineno', '?')})")
    del job["program"]
    namespace = {"__name__": "__candidate__" if job["judged"] else "__main__", "__builtins__": __builtins__}
    if job["limits"]["python_guard"]:
        guard(job["works"][0])
    try:
        exec(compiled, namespace)
    except SystemExit as stop:
        if not job["judged"] and stop.code in (None, 0):   # a stdin program may end with sys.exit()
            return
        return failed(PROGRAM_GONE)
    except BaseException as error:   # noqa: BLE001 - any failure of the program is its verdict
        return failed(describe(error))
    if not job["judged"]:
        return
    channel.send(["ready"])
    while (request := channel.receive()) is not None:
        channel.send(answer(namespace, request))


def flush_and_exit(status: int) -> None:
    """os._exit, after what the program printed (os._exit alone would drop what is still buffered)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def answer(namespace: dict, request) -> list:
    """One judge request, in the program's process: ["get", name] or ["call", name, args, kwargs]."""
    try:
        if request[0] == "get":
            if request[1] not in namespace:
                return ["missing"]
            value = namespace[request[1]]
            if callable(value):
                return ["callable"]
            if type(value).__name__ == "module":
                return ["module", value.__name__]
            return ["value", encode(value)]
        function = namespace[request[1]]
        return ["value", encode(function(*decode(request[2]), **decode(request[3])))]
    except SystemExit:
        return ["raised", "SystemExit", PROGRAM_GONE]
    except BaseException as error:   # noqa: BLE001 - the judge decides what a raised exception means
        return ["raised", type(error).__name__, describe(error)]


def run_judge(job: dict, results, replies_fd: int, requests_fd: int) -> None:
    """The judge's process: read the tests from their pipe, wait for the program, then run each unit in a
    namespace whose missing names are the program's (its functions as proxies, its plain values copied);
    report each unit's outcome on the results pipe, which the program's process does not hold."""
    with os.fdopen(job["tests_fd"], "rb") as pipe:
        units = json.loads(pipe.read().decode("utf-8"))
    channel = Channel(replies_fd, requests_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    set_limits_and_drop(job, 1)

    def report(**fields):
        results.write(json.dumps(fields) + "\n")

    if not units:
        return report(ok=False, error="no tests")
    try:
        compiled = [compile(unit, f"<test {i + 1}>", "exec") for i, unit in enumerate(units)]
    except (SyntaxError, ValueError) as error:
        return report(ok=False, error=f"does not parse: {getattr(error, 'msg', error)} (line "
                                      f"{getattr(error, 'lineno', '?')} of {getattr(error, 'filename', 'a test')})")
    if job["limits"]["python_guard"]:
        guard(job["works"][1])
    first = channel.receive()
    if first != ["ready"]:
        reason = first[1] if isinstance(first, list) and len(first) == 2 and first[0] == "failed" else PROGRAM_GONE
        return report(ok=False, error=str(reason)[:300])
    namespace = ProgramNames(channel)
    namespace.update({"__name__": "__tests__", "__builtins__": __builtins__})
    for index, unit in enumerate(compiled):
        try:
            exec(unit, namespace)
            report(unit=index, ok=True)
        except ProgramGone:
            return report(unit=index, ok=False, error=PROGRAM_GONE)
        except SystemExit:
            return report(unit=index, ok=False, error=PROGRAM_GONE)
        except BaseException as error:   # noqa: BLE001
            report(unit=index, ok=False, error=describe(error))
    report(done=True)


class ProgramGone(Exception):
    """The program's process ended (or answered nonsense) while the judge needed it."""


class ProgramNames(dict):
    """The judge's globals: a name the tests did not define is looked up in the program's process. A function
    becomes a proxy that calls it there; a plain value is copied; a module is imported here."""

    def __init__(self, channel):
        super().__init__()
        self.channel = channel

    def __missing__(self, name):
        import builtins
        if hasattr(builtins, name):
            raise KeyError(name)   # the builtin is looked up next
        kind = self.channel.ask(["get", name])
        if kind[0] == "callable":
            self[name] = Proxy(self.channel, name)
            return self[name]
        if kind[0] == "value":
            return decode(kind[1])
        if kind[0] == "module" and kind[1] in PRELOADED:
            import importlib
            return importlib.import_module(kind[1])
        raise KeyError(name)


class Proxy:
    """A function of the program, called in the program's process; arguments and result cross as plain data."""

    def __init__(self, channel, name):
        self.channel, self.name = channel, name

    def __call__(self, *args, **kwargs):
        reply = self.channel.ask(["call", self.name, encode(list(args)), encode(kwargs)])
        if reply[0] == "value":
            return decode(reply[1])
        if reply[0] == "raised" and len(reply) == 3:
            import builtins
            if reply[1] == "SystemExit":
                raise ProgramGone()
            kind = getattr(builtins, str(reply[1]), None)
            if isinstance(kind, type) and issubclass(kind, Exception):
                raise kind(str(reply[2])[:300])
            raise RuntimeError(f"{str(reply[1])[:50]}: {str(reply[2])[:300]}")
        raise ProgramGone()


class Channel:
    """Length-prefixed JSON messages over a pair of pipes (at most 64 MiB each)."""

    def __init__(self, read_fd: int, write_fd: int):
        self.reader, self.writer = os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb")
        self.dumps, self.loads = json.dumps, json.loads   # the program may replace json's functions later

    def send(self, message) -> None:
        data = self.dumps(message).encode()
        try:
            self.writer.write(len(data).to_bytes(4, "big") + data)
            self.writer.flush()
        except (BrokenPipeError, OSError):
            pass

    def receive(self):
        """The next message, or None at end of file or on anything malformed."""
        try:
            size = int.from_bytes(self.reader.read(4) or b"\0\0\0\0", "big")
            if size == 0 or size > 64 << 20:
                return None
            data = self.reader.read(size)
            return self.loads(data) if len(data) == size else None
        except (OSError, ValueError, RecursionError, MemoryError):
            return None

    def ask(self, message) -> list:
        self.send(message)
        reply = self.receive()
        if not isinstance(reply, list) or not reply:
            raise ProgramGone()
        return reply


def encode(value, depth: int = 0):
    """A plain value as JSON, each container tagged with its type: the only things that cross between the judge
    and the program. Anything else (an object with its own __eq__, a generator, a function) is refused."""
    if depth > 100:
        raise TypeError("a value nested more than 100 deep")
    kind = type(value)
    if value is None or kind in (bool, str) or (kind is int and abs(value) < 1 << 53):
        return value
    if kind is int:
        return {"int": str(value)}
    if kind is float:
        return value if value == value and abs(value) != float("inf") else {"float": repr(value)}
    if kind in (list, tuple, set, frozenset):
        return {kind.__name__: [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [repr(value.real), repr(value.imag)]}
    raise TypeError(f"cannot pass a {kind.__name__} between the tests and the program (plain data only)")


def decode(value, depth: int = 0):
    """encode's inverse, strict: builds only None, bool, int, float, str, bytes, complex and the plain containers."""
    if depth > 100:
        raise TypeError("a value nested more than 100 deep")
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) is not dict or len(value) != 1:
        raise TypeError("a malformed value from the program")
    (kind, inside), = value.items()
    if kind == "int":
        return int(inside)
    if kind == "float":
        return float(inside)
    if kind == "bytes":
        return bytes.fromhex(inside)
    if kind == "complex":
        return complex(float(inside[0]), float(inside[1]))
    containers = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
    if kind in containers and type(inside) is list:
        return containers[kind](decode(v, depth + 1) for v in inside)
    if kind == "dict" and type(inside) is list:
        return {decode(k, depth + 1): decode(v, depth + 1) for k, v in inside}
    raise TypeError("a malformed value from the program")


def describe(error: BaseException) -> str:
    """An exception as a one-line reason; the limits' own failures by name."""
    if isinstance(error, MemoryError):
        return "memory limit"
    if isinstance(error, OSError) and error.errno == 27:   # EFBIG: past the file-size limit
        return "output limit"
    text = str(error).strip().splitlines()
    return type(error).__name__ + (f": {text[0][:200]}" if text else "")


def no_dumps() -> None:
    """prctl(PR_SET_DUMPABLE, 0): this process and its forks cannot be traced, and their /proc files and open
    descriptors belong to root, even for another process of the same user."""
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except (OSError, AttributeError):   # not Linux
        pass


def enter_namespaces(as_root: bool, folder: str | None) -> bool:
    """New PID and network namespaces for what the next fork starts: a network namespace has nothing but a
    down loopback, so nothing can be reached. Root also gets a mount namespace, with its own small /tmp,
    /dev/shm and /var/tmp when `folder` (the check's) is given (private_scratch). Others try PID and network through a new user namespace
    (allowed on many Linux systems). False when neither works: then only the audit hook refuses sockets."""
    import ctypes
    clone_newpid, clone_newnet, clone_newuser, clone_newns = 0x20000000, 0x40000000, 0x10000000, 0x00020000
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        unshare = libc.unshare
    except (OSError, AttributeError):   # not Linux
        return False
    if unshare(clone_newpid | clone_newnet | (clone_newns if as_root else clone_newuser)) != 0:
        return False
    if folder:
        private_scratch(libc, folder)
    return True


SCRATCH_PLACES = ("/tmp", "/dev/shm", "/var/tmp")   # world-writable: where a program could leave files behind


def private_scratch(libc, folder: str) -> None:
    """In the check's own mount namespace: a fresh 64 MiB tmpfs on each of SCRATCH_PLACES, gone with the
    namespace, so nothing written there outlives the check or reaches another; the check's folder (under /tmp)
    is bound back at its own path. Mounts made here never propagate to the host."""
    ms_rec, ms_private, ms_bind, ms_nosuid, ms_nodev = 0x4000, 0x40000, 0x1000, 0x2, 0x4
    if libc.mount(b"none", b"/", None, ms_rec | ms_private, None) != 0:
        return
    keep = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    for place in SCRATCH_PLACES:
        if os.path.isdir(place) and not os.path.islink(place):
            libc.mount(b"tmpfs", place.encode(), b"tmpfs", ms_nosuid | ms_nodev, b"size=64m,mode=1777")
    if not os.path.isdir(folder):   # hidden under a new tmpfs: bind the real one back
        os.makedirs(folder)
        libc.mount(f"/proc/self/fd/{keep}".encode(), folder.encode(), None, ms_bind, None)
    os.close(keep)


# Python-level events (sys.addaudithook) the guard refuses: starting processes, signals, sockets, native code,
# symbolic links (a link inside that points outside could be swapped under a check), and what reaches the hook's
# own objects (the garbage collector's lists, tracing, which can rewrite a running frame's variables)
REFUSED_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "os.kill",
    "os.killpg", "socket.__new__", "socket.connect", "socket.bind", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
    "os.chroot", "os.setuid", "os.symlink", "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace",
    "sys.setprofile"})
# modules a program may not import: _posixsubprocess.fork_exec starts a process and raises no audit event
REFUSED_IMPORTS = frozenset({"_posixsubprocess"})
# events that change the file system: allowed inside the working folder only; (event, which arguments are paths)
# (a hard link's source too: linking a file outside in would let the program write it)
PATH_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.truncate": (0,), "os.chmod": (0,),
               "os.chown": (0,), "os.mkdir": (0,), "os.link": (0, 1), "os.utime": (0,),
               "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,), "shutil.move": (0, 1),
               "sqlite3.connect": (0,)}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def guard(work: str) -> None:
    """An audit hook (PEP 578) that refuses, from Python, what the kernel-level limits might not hold when not
    run as root: new processes, signals, sockets, ctypes, and any write, deletion or rename outside the working
    folder. Audit hooks cannot be removed from Python; native code gets past them, hence the kernel limits."""
    import posix
    sys.addaudithook(audit_hook(os.path.realpath(work) + os.sep, posix.getcwd, posix.stat,
                                dict(PATH_EVENTS)))


def audit_hook(inside: str, getcwd, stat, path_events: dict, refused=REFUSED_EVENTS, refused_imports=REFUSED_IMPORTS,
               write_flags=WRITE_FLAGS, str=str, bytes=bytes, int=int, type=type, PermissionError=PermissionError,
               OSError=OSError):
    """The guard's hook. It trusts nothing the program can change once it runs: it reads no global or built-in
    name (the program can rebind any module's names, the built-ins' too: all it uses is bound here, before the
    program starts), resolves a path from its text alone with the C functions given, and takes a path only as an
    exact str or bytes (a path object's __fspath__ could answer the kernel and the hook differently; a str
    subclass could answer its own methods). A ".." is refused in what it checks: with a dir_fd the kernel resolves
    it from another folder than the working one; with no symbolic link inside (none can be made), a path without
    ".." names what its text says."""

    def resolved(path):
        """The absolute path a plain str or bytes names, or None: not plain, or with a ".." component."""
        if type(path) is bytes:
            path = path.decode("utf-8", "surrogateescape")
        if type(path) is not str:
            return None
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        parts = []
        for part in path.split("/"):
            if part == "..":
                return None
            if part and part != ".":
                parts.append(part)
        return "/" + "/".join(parts)

    def outside(path):
        if type(path) is int:   # an open file descriptor: only files and folders inside can be opened
            return False
        if (type(path) is str or type(path) is bytes) and path in (":memory:", "", b":memory:", b""):
            return False   # sqlite3's in-memory database
        where = resolved(path)
        return where is None or not (where + "/").startswith(inside)

    def is_folder(path):
        try:
            return stat(path).st_mode & 0o170000 == 0o040000
        except OSError:
            return False

    def hook(event, args):
        if event in refused:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and (type(args[0]) is not str or args[0] in refused_imports):
            raise PermissionError(f"sandbox: importing {args[0]!r:.100} is not allowed")
        if event == "open" and args[0] is not None and type(args[0]) is not int:
            path, mode, flags = args
            where = resolved(path)
            if where is None:
                raise PermissionError("sandbox: open takes a plain str or bytes path without '..' here")
            writes = (mode is not None and (type(mode) is not str or "w" in mode or "a" in mode or "x" in mode
                                            or "+" in mode)) or type(flags) is not int or flags & write_flags != 0
            # a folder outside, even opened to read, would be a dir_fd that os.open(name, dir_fd=...) writes
            # through, with a name this hook resolves against the working folder
            if not (where + "/").startswith(inside) and (writes or is_folder(where)):
                raise PermissionError(f"sandbox: {'writing' if writes else 'opening a folder'} outside the "
                                      f"working folder ({where:.200})")
        elif event in path_events:
            for index in path_events[event]:
                if args[index] is not None and outside(args[index]):
                    raise PermissionError(f"sandbox: {event} outside the working folder")
            if event == "sqlite3.connect" and type(args[0]) is str and args[0][:5].lower() == "file:":
                raise PermissionError("sandbox: sqlite3 URIs are not allowed")   # a URI names any file

    return hook


if __name__ == "__main__":
    sandbox_child(sys.argv[1])
