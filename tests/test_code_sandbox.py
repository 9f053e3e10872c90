"""The code checker: HumanEval's canonical solutions pass and corrupted ones fail; hostile programs are contained,
each counted as a failure with its reason, and checking goes on. Each hostile program runs twice where the
machine allows: with the Python audit hook (the default), and, as root, with the hook off, to show what the
kernel-level limits (resource limits, the sandbox user, the network namespace) hold alone."""
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from omniopd_lib import codetask, sandbox

ROOT = os.geteuid() == 0
LAYERS = ["guard", pytest.param("kernel", marks=pytest.mark.skipif(
    not ROOT, reason="the kernel-only layer needs root (it drops to a sandbox user and leaves the network)"))]
PASSES = {"asserts": ["assert True"]}   # a test the program would pass if it came back normally


def limits(layer, **changes):
    """guard: the audit hook alone stands between the program and a world-writable target (no private /tmp);
    kernel (root): the resource limits, the sandbox user and the namespaces alone, with no hook."""
    return codetask.Limits(seconds=2.0, python_guard=layer == "guard", private_scratch=layer == "kernel", **changes)


def leftover_processes() -> list[int]:
    """Processes still running this module as a sandbox child."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if b"omniopd_lib/sandbox.py" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def human_eval():
    return codetask.human_eval_rows()


def test_every_canonical_human_eval_solution_passes(human_eval):
    assert len(human_eval) == 164
    programs = [codetask.program_of(row, row["answer"]) for row in human_eval]
    verdicts = codetask.check_many(programs, [row["tests"] for row in human_eval], workers=2)
    failed = [(row["question"][:40], v.reason) for row, v in zip(human_eval, verdicts) if not v.passed]
    assert not failed


def test_corrupted_human_eval_solutions_fail(human_eval):
    """Every return value wrapped in a tuple, and every body replaced by `pass`: all 328 fail."""
    wrapped = [re.sub(r"\breturn (.+)$", r"return ('corrupted', \1)", row["answer"], flags=re.M) for row in human_eval]
    emptied = ["    pass\n"] * len(human_eval)
    rows = human_eval + human_eval
    programs = [codetask.program_of(row, body) for row, body in zip(rows, wrapped + emptied)]
    verdicts = codetask.check_many(programs, [row["tests"] for row in rows], workers=2)
    assert not [v for v in verdicts if v.passed]
    assert all(v.reason != "passed" for v in verdicts)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("program", ["while True:\n    pass\n", "import time\ntime.sleep(1000)\n"])
def test_a_program_that_never_ends_is_stopped_at_the_time_limit(program, layer):
    start = time.monotonic()
    verdict = codetask.check(program, PASSES, limits(layer))
    assert not verdict.passed and verdict.reason.startswith("time limit")
    assert time.monotonic() - start < 6
    assert not leftover_processes()


@pytest.mark.parametrize("layer", LAYERS)
def test_a_fork_bomb_is_contained_and_every_process_is_killed(layer):
    fork = "os.fork" if layer == "guard" else "posix.fork"   # posix.fork skips nothing but os's name
    program = f"import os, posix, time\nwhile True:\n    try:\n        {fork}()\n    except BlockingIOError:\n        time.sleep(0.01)\n"
    verdict = codetask.check(program, PASSES, limits(layer))
    assert not verdict.passed
    assert verdict.reason.startswith("PermissionError: sandbox: os.fork") if layer == "guard" else \
        verdict.reason.startswith("time limit")
    time.sleep(0.2)
    assert not leftover_processes()


@pytest.mark.skipif(not ROOT, reason="without root a process that leaves the process group outlives the check")
def test_a_process_that_leaves_the_group_is_killed_too():
    program = "import posix, time\nif posix.fork() == 0:\n    posix.setsid()\n    time.sleep(1000)\nposix._exit(0)\n"
    verdict = codetask.check(program, PASSES, limits("kernel"))
    assert verdict.reason.startswith("exited before its tests finished")
    time.sleep(0.2)
    assert not leftover_processes()


@pytest.mark.parametrize("layer", LAYERS)
def test_a_10_gb_allocation_hits_the_memory_limit(layer):
    verdict = codetask.check("x = bytearray(10 * 1024 ** 3)\n", PASSES, limits(layer))
    assert (verdict.passed, verdict.reason) == (False, "memory limit")


@pytest.mark.parametrize("layer", LAYERS)
def test_printing_gigabytes_hits_the_output_limit(layer):
    verdict = codetask.check("while True:\n    print('x' * 100_000)\n", PASSES, limits(layer))
    assert (verdict.passed, verdict.reason) == (False, "output limit")


ATTACKS = {
    "overwrite": "open({target!r}, 'w').write('overwritten')",
    "append": "import posix\nfd = posix.open({target!r}, posix.O_WRONLY | posix.O_APPEND)\nposix.write(fd, b'more')",
    "delete": "import posix\nposix.unlink({target!r})",
    "create": "open({new!r}, 'w').write('new')",
    "remove folder": "import shutil\nshutil.rmtree({folder!r})",
    "rename": "import os\nos.rename({target!r}, {new!r})",
    # a folder outside as dir_fd, a name resolved against it (#22)
    "dir_fd truncate": ("import os\nd = os.open({folder!r}, os.O_RDONLY)\n"
                        "fd = os.open('keep.txt', os.O_WRONLY | os.O_TRUNC, dir_fd=d)\nos.write(fd, b'overwritten')"),
    "dir_fd create": ("import os\nd = os.open({folder!r}, os.O_RDONLY)\n"
                      "os.close(os.open('new.txt', os.O_WRONLY | os.O_CREAT, dir_fd=d))"),
    "dir_fd remove": "import os\nd = os.open({folder!r}, os.O_RDONLY)\nos.unlink('keep.txt', dir_fd=d)",
    # a hard link to a file outside, written through the link
    "hard link": "import os\nos.link({target!r}, 'l')\nopen('l', 'w').write('overwritten')",
}


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_nothing_outside_the_working_folder_changes(attack, layer, tmp_path):
    """With the guard the target is world-writable, so only the audit hook stands in the way; with the kernel
    alone it is an ordinary private folder of the user running the checker (root)."""
    folder = tmp_path / "outside"
    folder.mkdir()
    target = folder / "keep.txt"
    target.write_text("original")
    if layer == "guard":
        os.chmod(tmp_path, 0o777)
        os.chmod(folder, 0o777)
        os.chmod(target, 0o666)
    program = ATTACKS[attack].format(target=str(target), new=str(folder / "new.txt"), folder=str(folder))
    verdict = codetask.check(program, PASSES, limits(layer))
    assert not verdict.passed
    # the kernel layer: the sandbox user may not write there, or (a private /tmp) cannot even see it
    assert "PermissionError" in verdict.reason or (layer == "kernel" and "FileNotFoundError" in verdict.reason)
    assert target.read_text() == "original"
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("layer", LAYERS)
def test_a_socket_reaches_nothing(layer):
    """A real server listens on loopback; the program's connection must never arrive."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(3.0)
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass
    listener = threading.Thread(target=accept)
    listener.start()
    port = server.getsockname()[1]
    program = (f"import socket\nconnection = socket.socket()\nconnection.settimeout(1)\n"
               f"connection.connect(('127.0.0.1', {port}))\nconnection.sendall(b'hello')\n")
    verdict = codetask.check(program, PASSES, limits(layer))
    listener.join()
    server.close()
    assert not verdict.passed and not accepted
    assert verdict.reason.startswith("PermissionError: sandbox: socket" if layer == "guard" else "OSError")


@pytest.mark.parametrize("exit_call", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"])
def test_exiting_before_the_tests_run_is_a_failure(exit_call):
    program = "def add(a, b):\n    return a + b\n" + exit_call + "\n"
    verdict = codetask.check(program, {"asserts": ["assert add(1, 2) == 3"]})
    assert (verdict.passed, verdict.reason) == (False, "exited before its tests finished")


def test_tests_that_do_not_parse_and_rows_without_tests_are_failures_with_their_reason():
    program = "def add(a, b):\n    return a + b\n"
    unparsable = codetask.check(program, {"asserts": ["assert add(1, 2) == (3"]})
    assert not unparsable.passed and unparsable.reason.startswith("does not parse")
    assert codetask.check(program, {"asserts": []}) == codetask.Verdict(False, 0.0, "no tests")
    assert codetask.check(program, {"io": []}) == codetask.Verdict(False, 0.0, "no tests")
    broken = codetask.check("def add(a, b)\n    return a + b\n", {"asserts": ["assert add(1, 2) == 3"]})
    assert not broken.passed and broken.reason.startswith("does not parse")


def test_checking_goes_on_after_hostile_programs_and_keeps_the_order():
    good = "def add(a, b):\n    return a + b\n"
    programs = [good, "while True:\n    pass\n", good, "x = bytearray(10 * 1024 ** 3)\n", good,
                "import os\nos.fork()\n", good]
    tests = [{"asserts": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]}] * len(programs)
    verdicts = codetask.check_many(programs, tests, codetask.Limits(seconds=1.0), workers=2)
    assert [v.passed for v in verdicts] == [True, False, True, False, True, False, True]
    assert [v.reason.split(":")[0] for v in verdicts[1::2]] == ["time limit", "memory limit", "PermissionError"]


def test_fraction_of_tests_passed_and_stdin_programs():
    half = codetask.check("def f(x):\n    return x if x < 3 else 0\n",
                          {"asserts": ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3", "assert f(4) == 4"]})
    assert (half.passed, half.fraction, half.reason) == (False, 0.5, "AssertionError")
    summing = "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n"
    cases = [["1 2\n", "3\n"], ["4 5", "9"], ["1 1", "3"]]
    verdict = codetask.check(summing, {"io": cases})
    assert (verdict.passed, verdict.reason) == (False, "wrong output on test 3")
    assert verdict.fraction == pytest.approx(2 / 3)
    assert codetask.check(summing + "raise SystemExit(0)\n", {"io": cases[:2]}).passed   # exit(0) ends a stdin program
    assert codetask.check("input()\n", {"asserts": ["assert True"]}).reason == "EOFError: EOF when reading a line"


# ----------------------------------------------------------------------------
# A program cannot decide its own verdict (#22): the tests run in a second process, the judge, which gets plain
# values back from the program's functions; the verdict travels on a pipe the program's process does not hold.

RIGGED = {"asserts": ["assert add(1, 2) == 3", "raise Exception('this unit always fails')"]}
SELF_PASSING = {
    "exec a no-op": "import builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "report from the frame": ("import sys\nframe = sys._getframe(1)\n"
                              "for name in ('report', 'results', 'channel'):\n"
                              "    thing = frame.f_locals.get(name)\n"
                              "    if thing is not None and hasattr(thing, 'write'):\n"
                              "        thing.write('{\"done\": true}\\n')\n"),
    "patched json": "import json\njson.dumps = lambda *a, **k: '{\"unit\": 1, \"ok\": true, \"done\": true}'\n",
    "every descriptor": ("import os, json\nline = json.dumps({'unit': 1, 'ok': True}) + '\\n' + json.dumps({'done': True})\n"
                         "for fd in range(3, 256):\n"
                         "    try:\n        os.write(fd, (line + '\\n').encode())\n    except OSError:\n        pass\n"),
    "the parent's descriptors": ("import os\nfor pid in (os.getppid(), os.getppid() - 1, 1):\n"
                                 "    for fd in range(3, 64):\n"
                                 "        try:\n"
                                 "            with open(f'/proc/{pid}/fd/{fd}', 'w') as h:\n"
                                 "                h.write('{\"unit\": 1, \"ok\": true}\\n{\"done\": true}\\n')\n"
                                 "        except Exception:\n            pass\n"),
    "an object equal to everything": ("class Anything:\n    def __eq__(self, other):\n        return True\n"
                                      "    __hash__ = object.__hash__\n"
                                      "_add = add\ndef add(a, b):\n    return Anything()\n"),
    "an int subclass": ("class Int(int):\n    def __eq__(self, other):\n        return True\n"
                        "    __hash__ = int.__hash__\ndef add(a, b):\n    return Int(0)\n"),
    "exit zero after the program": "import atexit, os\natexit.register(lambda: os._exit(0))\n",
}


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("attack", sorted(SELF_PASSING))
def test_a_program_cannot_pass_a_test_that_fails(attack, layer):
    program = "def add(a, b):\n    return a + b\n" + SELF_PASSING[attack]
    verdict = codetask.check(program, RIGGED, limits(layer))
    assert not verdict.passed and verdict.fraction <= 0.5, verdict
    if attack not in ("an object equal to everything", "an int subclass", "every descriptor"):   # these break
        # their own side of the pipe to the judge, or return what cannot cross it
        assert verdict.fraction == 0.5 and verdict.reason == "Exception: this unit always fails", verdict


@pytest.mark.parametrize("layer", LAYERS)
def test_a_program_cannot_read_its_tests(layer, tmp_path):
    """The tests reach the judge through a pipe; the job file holds only the program (and, as root, only root
    may read it). A program that finds the expected value in any file it can read passes; none does."""
    hunt = ("import os\nfound = None\nfor folder in ('..', '.', os.environ.get('HOME', '.')):   # the check's own\n"
            "    for root, _, files in os.walk(folder):\n"
            "        for name in files:\n"
            "            try:\n"
            "                text = open(os.path.join(root, name), errors='ignore').read(1_000_000)\n"
            "            except Exception:\n"
            "                continue\n"
            "            if 'SECRET-EXPECTED-' in text:\n"
            "                found = text.split('SECRET-EXPECTED-')[1][:6]\n"
            "def answer():\n    return found\n")
    verdict = codetask.check(hunt, {"asserts": ["assert answer() == '424242'  # SECRET-EXPECTED-424242"]},
                             limits(layer))
    assert not verdict.passed and verdict.reason == "AssertionError", verdict


def test_values_cross_as_plain_data_only():
    values = [None, True, 3, -2 ** 80, 1.5, float("inf"), "é", b"\x00\xff", 1 + 2j, [1, (2, 3)], {4, 5},
              frozenset({6}), {"a": [1], (1, 2): {"b": None}}, ()]
    for value in values:
        assert sandbox.decode(sandbox.encode(value)) == value and type(sandbox.decode(sandbox.encode(value))) is type(value)
    for refused in (object(), lambda: 1, iter([1]), type("Int", (int,), {})(3)):
        with pytest.raises(TypeError):
            sandbox.encode(refused)
    for malformed in ([1, 2], {"list": 1}, {"evil": []}, {"int": "1", "x": 2}):
        with pytest.raises((TypeError, ValueError)):
            sandbox.decode(malformed)


def test_tests_may_use_the_programs_helpers_values_and_modules():
    program = ("import math\nLIMIT = 10\ndef square(x):\n    return x * x\n"
               "def apply(xs):\n    return [square(x) for x in xs]\n"
               "def fail():\n    raise ValueError('no')\n")
    tests = {"asserts": ["assert apply([1, 2]) == [1, 4] and LIMIT == 10 and math.isclose(math.pi, 3.14159, "
                         "rel_tol=1e-3)",
                         "try:\n    fail()\nexcept ValueError as error:\n    assert 'no' in str(error)\nelse:\n"
                         "    assert False"]}
    assert codetask.check(program, tests) == codetask.Verdict(True, 1.0, "passed")


@pytest.mark.parametrize("layer", LAYERS)
def test_sqlite_cannot_rewrite_a_database_outside(layer, tmp_path):
    """A teacher cache is an SQLite file: sqlite3 writes it natively, past the open() hook."""
    import sqlite3
    database = tmp_path / "teacher_cache.sqlite"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE answers (key TEXT, text TEXT)")
        db.execute("INSERT INTO answers VALUES ('k', 'paid for')")
    db.close()
    if layer == "guard":
        os.chmod(tmp_path, 0o777)
        os.chmod(database, 0o666)
    program = (f"import sqlite3\ndb = sqlite3.connect({str(database)!r})\n"
               f"db.execute(\"UPDATE answers SET text = 'poisoned'\")\ndb.commit()\n")
    verdict = codetask.check(program, PASSES, limits(layer))
    assert not verdict.passed and verdict.reason.split(":")[0] in ("PermissionError", "OperationalError"), verdict
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT text FROM answers").fetchall() == [("paid for",)]


@pytest.mark.parametrize("layer", LAYERS)
def test_files_written_to_tmp_and_dev_shm_do_not_outlive_the_check(layer):
    """Twenty 900 kB files in each of /tmp, /dev/shm and /var/tmp (each under the 1 MiB file-size limit): with the
    guard they are refused; as root with the guard off they land in the check's own tmpfs, gone with it."""
    tag = f"omniopd-leftover-{os.getpid()}-{layer}"
    program = (f"import os\nfor place in ('/tmp', '/dev/shm', '/var/tmp'):\n"
               f"    for i in range(20):\n"
               f"        with open(os.path.join(place, '{tag}-%d' % i), 'wb') as h:\n"
               f"            h.write(b'x' * 900_000)\n")
    verdict = codetask.check(program, PASSES, limits(layer))
    assert verdict.passed == (layer == "kernel"), verdict
    assert not [p for place in ("/tmp", "/dev/shm", "/var/tmp") for p in Path(place).glob(f"{tag}-*")]


SYSTEM_PYTHON = "/usr/bin/python3"   # readable by every user, unlike a Python under /root
UNPRIVILEGED = pytest.mark.skipif(not ROOT or not os.access(SYSTEM_PYTHON, os.X_OK),
                                  reason="needs root (to become nobody) and a system Python nobody can run")


@pytest.fixture
def nobody_home():
    """A folder user nobody can read (pytest's own tmp_path is root's alone), removed afterwards."""
    import shutil
    import tempfile
    home = Path(tempfile.mkdtemp(prefix="omniopd-nobody-"))
    os.chmod(home, 0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def run_as_nobody(checks: list, home: Path, limits: dict | None = None) -> list[dict]:
    """codetask.check for each (program, tests) pair, run by user nobody with the system Python: the non-root
    path (no sandbox user, no namespaces unless user namespaces are allowed; the judge and the hook hold)."""
    import json
    import shutil
    import subprocess
    shutil.copy(Path(sandbox.__file__), home / "sandbox.py")
    (home / "checks.json").write_text(json.dumps(checks))
    (home / "driver.py").write_text(
        "import dataclasses, json, sys\nsys.path.insert(0, sys.argv[1])\nimport sandbox as codetask\n"
        "checks = json.load(open(sys.argv[1] + '/checks.json'))\n"
        "limits = codetask.Limits(**{'seconds': 3.0, **json.loads(sys.argv[2])})\n"
        "print(json.dumps([dataclasses.asdict(codetask.check(p, t, limits)) for p, t in checks]))\n")
    for name in ("sandbox.py", "checks.json", "driver.py"):
        os.chmod(home / name, 0o644)

    def become_nobody():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    done = subprocess.run([SYSTEM_PYTHON, "-I", str(home / "driver.py"), str(home), json.dumps(limits or {})],
                          capture_output=True, text=True,
                          timeout=300, preexec_fn=become_nobody, cwd=home, env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def nobodys_own_target(home: Path) -> tuple[Path, Path]:
    """A folder outside the check and a file in it ("original"), both user nobody's: only the guard protects them."""
    outside = home / "outside"
    outside.mkdir()
    target = outside / "keep.txt"
    target.write_text("original")
    for path in (outside, target):
        os.chown(path, 65534, 65534)
    return outside, target


@UNPRIVILEGED
def test_without_root_a_program_still_cannot_pass_its_own_tests_or_write_outside(nobody_home):
    """As nobody, every file of the check and the targets belong to the same user, so only the judge's
    separation (pipes, non-dumpable processes) and the audit hook stand in the way."""
    outside, target = nobodys_own_target(nobody_home)
    good = [("def add(a, b):\n    return a + b\n", {"asserts": ["assert add(1, 2) == 3"]})]
    checks = [("def add(a, b):\n    return a + b\n" + SELF_PASSING[name], RIGGED) for name in sorted(SELF_PASSING)]
    writes = ["dir_fd truncate", "dir_fd create", "hard link", "overwrite", "append"]
    checks += [(ATTACKS[name].format(target=str(target), new=str(outside / "new.txt"), folder=str(outside)), PASSES)
               for name in writes]
    verdicts = run_as_nobody(good + checks, nobody_home)
    assert verdicts[0]["passed"], verdicts[0]
    for name, verdict in zip(sorted(SELF_PASSING), verdicts[1:]):
        assert not verdict["passed"] and verdict["fraction"] <= 0.5, (name, verdict)
    for name, verdict in zip(writes, verdicts[1 + len(SELF_PASSING):]):
        assert not verdict["passed"] and "PermissionError" in verdict["reason"], (name, verdict)
    assert target.read_text() == "original" and sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


# ----------------------------------------------------------------------------
# The guard switched off from inside (#33 item 1): the hook must trust nothing the program can change. Each
# attack writes {target} (world-writable, so only the hook stands in the way) or creates {new}.

GUARD_ATTACKS = {
    "patched realpath": ("import os\nos.path.realpath = lambda path, **k: os.getcwd() + '/harmless'\n"
                         "open({target!r}, 'w').write('overwritten')"),
    "cleared tables": ("import sys, os\nmain = sys.modules['__main__']\n"
                       "for name in ('REFUSED_EVENTS', 'PATH_EVENTS', 'REFUSED_IMPORTS'):\n"
                       "    table = getattr(main, name, None)\n"
                       "    setattr(main, name, type(table)())\n"
                       "    getattr(table, 'clear', lambda: None)()\n"
                       "os.rename({target!r}, {new!r})"),
    "cleared tables then a shell": ("import sys, os\nmain = sys.modules['__main__']\n"
                                    "main.REFUSED_EVENTS = frozenset()\n"
                                    "os.system('echo overwritten > {target}')"),
    "fork_exec": ("import os, sys\nps = sys.modules.get('_posixsubprocess') or __import__('_posixsubprocess')\n"
                  "r, w = os.pipe()\nps.fork_exec([b'/bin/sh'], [b'/bin/sh'], True, (w,), None, None, -1, -1, -1, -1,"
                  " -1, -1, r, w, False, False, -1, None, None, -1, -1, None, False)\n"),
    "fork_exec through subprocess": ("import os, sys\nps = sys.modules.get('subprocess') or __import__('subprocess')\n"
                                     "r, w = os.pipe()\nps._fork_exec([b'/bin/sh'], [b'/bin/sh'], True, (w,), None, "
                                     "None, -1, -1, -1, -1, -1, -1, r, w, False, False, -1, None, None, -1, -1, None, "
                                     "False)\n"),
    "patched built-ins": ("import builtins, sys\nyes, no = (lambda *a: True), (lambda *a: False)\n"
                          "saved = builtins.isinstance, builtins.any\nbuiltins.isinstance, builtins.any = yes, no\n"
                          "sys.modules['__main__'].__dict__.update(isinstance=yes, any=no)\ntry:\n"
                          "    open({target!r}, 'w').write('overwritten')\nfinally:   # the checker's own code "
                          "needs them to report\n    builtins.isinstance, builtins.any = saved\n"
                          "    [sys.modules['__main__'].__dict__.pop(name) for name in ('isinstance', 'any')]\n"),
    "a path that changes its answer": ("class Flip:\n    calls = 0\n    def __fspath__(self):\n"
                                       "        Flip.calls += 1\n"
                                       "        return {target!r} if Flip.calls == 1 else 'harmless'\n"
                                       "open(Flip(), 'w').write('overwritten')"),
    "a str that lies": ("class Liar(str):\n    def startswith(self, *a):\n        return True\n"
                        "    def split(self, *a):\n        return ['harmless']\n"
                        "open(Liar({target!r}), 'w').write('overwritten')"),
    "dot-dot through a dir_fd": ("import os\nwork = os.open('.', os.O_RDONLY)\nos.makedirs('a/b/c/d/e/f/g/h/i/j')\n"
                                 "os.chdir('a/b/c/d/e/f/g/h/i/j')\n"
                                 "up = '../' * (os.getcwd().count('/') - 10)\n"
                                 "fd = os.open(up + {target!r}.lstrip('/'), os.O_WRONLY | os.O_TRUNC, dir_fd=work)\n"
                                 "os.write(fd, b'overwritten')"),
    "sqlite URI": ("import sqlite3\ndb = sqlite3.connect('file:' + {new!r} + '?mode=rwc', uri=True)\n"
                   "db.execute('create table t (x)')\ndb.commit()"),
    "the hook's code replaced": ("import gc\nfor thing in gc.get_objects():\n"
                                 "    if getattr(thing, '__name__', '') == 'hook':\n"
                                 "        thing.__code__ = (lambda event, args: None).__code__\n"
                                 "open({target!r}, 'w').write('overwritten')"),
    "a tracer rewrites the hook's variables": (
        "import sys\ndef tracer(frame, event, arg):\n"
        "    if frame.f_code.co_name == 'hook':\n        frame.f_locals['refused'] = frozenset()\n"
        "    return tracer\nsys.settrace(tracer)\nimport os\nos.system('echo overwritten > {target}')"),
    "a symbolic link swapped after the check": ("import os\nos.symlink({target!r}, 'link')\n"
                                                "open('link', 'w').write('overwritten')"),
}


@pytest.mark.parametrize("attack", sorted(GUARD_ATTACKS))
def test_the_guard_cannot_be_switched_off_from_inside(attack, nobody_home):
    """The target lies where any user may write it (pytest's tmp_path is root's alone, which would let the
    sandbox user's permissions, not the guard, stop the attack)."""
    folder = nobody_home / "outside"
    folder.mkdir()
    target = folder / "keep.txt"
    target.write_text("original")
    for path, mode in ((folder, 0o777), (target, 0o666)):
        os.chmod(path, mode)
    program = GUARD_ATTACKS[attack].format(target=str(target), new=str(folder / "new.txt"))
    verdict = codetask.check(program, PASSES, limits("guard"))
    # as root the sandbox user cannot read the interpreter's folder: subprocess.py is not found before its import
    # of _posixsubprocess is refused
    refused = "PermissionError" in verdict.reason or (ROOT and attack == "fork_exec through subprocess"
                                                      and "No module named 'subprocess'" in verdict.reason)
    assert not verdict.passed and refused, verdict
    assert target.read_text() == "original"
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]


def test_the_fork_exec_attack_is_real_outside_the_sandbox(tmp_path):
    """The fork_exec call above does start a process where nothing refuses it (so the test above is not passing
    on a typo): in a plain interpreter it runs /bin/sh, which creates a file."""
    import subprocess
    import sys
    marker = tmp_path / "ran"
    program = GUARD_ATTACKS["fork_exec"].replace("[b'/bin/sh'], [b'/bin/sh']",
                                                 f"[b'/bin/sh', b'-c', b'touch {marker}'], [b'/bin/sh']")
    subprocess.run([sys.executable, "-c", program + "import time\ntime.sleep(1)\n"], check=True, timeout=30)
    assert marker.exists()


def test_the_hook_reads_no_global_name():
    """Every name the hook reads at run time is its own (bound before the program starts): the program can rebind
    any global or built-in name, so a LOAD_GLOBAL in the hook would be a switch the program holds."""
    import dis
    hook = sandbox.audit_hook("/nowhere/", os.getcwd, os.stat, {})
    codes, seen = [hook.__code__], []
    while codes:
        code = codes.pop()
        seen.append(code.co_name)
        assert not [i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")], code
        codes += [c for c in code.co_consts if hasattr(c, "co_code")]
    assert "hook" in seen and [c.cell_contents for c in hook.__closure__ if c.cell_contents is sandbox.REFUSED_EVENTS]


def test_the_guard_still_lets_a_program_work_inside_its_folder():
    program = ("import os, sqlite3, json, collections\nos.makedirs('a/b')\nopen('a/b/x.txt', 'w').write('12')\n"
               "os.rename('a/b/x.txt', 'a/y.txt')\ndb = sqlite3.connect('db.sqlite')\ndb.execute('create table t (x)')\n"
               "db.commit()\nmem = sqlite3.connect(':memory:')\nPoint = collections.namedtuple('Point', 'x y')\n"
               "def value():\n    return int(open(os.path.abspath('a/y.txt')).read()) + Point(1, 2).y\n")
    assert codetask.check(program, {"asserts": ["assert value() == 14"]}) == codetask.Verdict(True, 1.0, "passed")


@UNPRIVILEGED
def test_without_root_or_namespaces_a_program_cannot_forge_its_verdict_through_proc(nobody_home):
    """#33 item 2: with no user namespaces (Limits(namespaces=False)) and the guard off, a failing program run as
    the checker's own user opens every pipe and socket it finds under /proc/*/fd for writing, writes a passing
    report into each, and kills the judge. The checker's end of the results is a socket, which /proc cannot open
    again; the supervisor and the judge are not dumpable."""
    forge = ("import os, signal\nline = b'{\"unit\": 0, \"ok\": true}\\n{\"unit\": 1, \"ok\": true}\\n{\"done\": true}\\n'\n"
             "me, parent = os.getpid(), os.getppid()\nwritten = 0\n"
             "for pid in [p for p in os.listdir('/proc') if p.isdigit() and int(p) != me]:\n"
             "    try:\n        fds = os.listdir(f'/proc/{pid}/fd')\n    except OSError:\n        continue\n"
             "    for fd in fds:\n        try:\n"
             "            if os.readlink(f'/proc/{pid}/fd/{fd}').startswith(('pipe:', 'socket:')):\n"
             "                with open(f'/proc/{pid}/fd/{fd}', 'wb', buffering=0) as handle:\n"
             "                    handle.write(line)\n                    written += 1\n"
             "        except OSError:\n            pass\n"
             "for pid in [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) not in (me, parent)]:\n"
             "    try:\n        if b'sandbox.py' in open(f'/proc/{pid}/cmdline', 'rb').read():\n"
             "            os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n")
    verdicts = run_as_nobody([("def add(a, b):\n    return a - b\n" + forge, RIGGED)], nobody_home,
                             limits={"python_guard": False, "namespaces": False})
    assert not verdicts[0]["passed"] and verdicts[0]["fraction"] == 0.0, verdicts[0]


@UNPRIVILEGED
def test_without_root_the_realpath_patch_writes_nothing_outside(nobody_home):
    """#33 item 1 as the issue found it: as nobody, with the guard on, the realpath patch overwrote the user's
    own file and the verdict was passed."""
    outside, target = nobodys_own_target(nobody_home)
    program = GUARD_ATTACKS["patched realpath"].format(target=str(target))
    verdicts = run_as_nobody([(program, PASSES)], nobody_home)
    assert not verdicts[0]["passed"] and "PermissionError" in verdicts[0]["reason"], verdicts[0]
    assert target.read_text() == "original"
