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

import codetask

ROOT = os.geteuid() == 0
LAYERS = ["guard", pytest.param("kernel", marks=pytest.mark.skipif(
    not ROOT, reason="the kernel-only layer needs root (it drops to a sandbox user and leaves the network)"))]
PASSES = {"asserts": ["assert True"]}   # a test the program would pass if it came back normally


def limits(layer, **changes):
    return codetask.Limits(seconds=2.0, python_guard=layer == "guard", **changes)


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
    assert "PermissionError" in verdict.reason
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
