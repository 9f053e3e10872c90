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

from omniopd_lib import codetask

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
                if b"codetask.py" in (entry / "cmdline").read_bytes():
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
        assert codetask.decode(codetask.encode(value)) == value and type(codetask.decode(codetask.encode(value))) is type(value)
    for refused in (object(), lambda: 1, iter([1]), type("Int", (int,), {})(3)):
        with pytest.raises(TypeError):
            codetask.encode(refused)
    for malformed in ([1, 2], {"list": 1}, {"evil": []}, {"int": "1", "x": 2}):
        with pytest.raises((TypeError, ValueError)):
            codetask.decode(malformed)


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


def run_as_nobody(checks: list, home: Path) -> list[dict]:
    """codetask.check for each (program, tests) pair, run by user nobody with the system Python: the non-root
    path (no sandbox user, no namespaces unless user namespaces are allowed; the judge and the hook hold)."""
    import json
    import shutil
    import subprocess
    shutil.copy(Path(codetask.__file__), home / "codetask.py")
    (home / "checks.json").write_text(json.dumps(checks))
    (home / "driver.py").write_text(
        "import dataclasses, json, sys\nsys.path.insert(0, sys.argv[1])\nimport codetask\n"
        "checks = json.load(open(sys.argv[1] + '/checks.json'))\n"
        "limits = codetask.Limits(seconds=3.0)\n"
        "print(json.dumps([dataclasses.asdict(codetask.check(p, t, limits)) for p, t in checks]))\n")
    for name in ("codetask.py", "checks.json", "driver.py"):
        os.chmod(home / name, 0o644)

    def become_nobody():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    done = subprocess.run([SYSTEM_PYTHON, "-I", str(home / "driver.py"), str(home)], capture_output=True, text=True,
                          timeout=300, preexec_fn=become_nobody, cwd=home, env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@UNPRIVILEGED
def test_without_root_a_program_still_cannot_pass_its_own_tests_or_write_outside(nobody_home):
    """As nobody, every file of the check and the targets belong to the same user, so only the judge's
    separation (pipes, non-dumpable processes) and the audit hook stand in the way."""
    outside = nobody_home / "outside"
    outside.mkdir()
    target = outside / "keep.txt"
    target.write_text("original")
    for path in (outside, target):
        os.chown(path, 65534, 65534)
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
