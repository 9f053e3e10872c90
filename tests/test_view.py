"""The run's page (omniopd_tools/view.py, issue #35): real runs record view.jsonl, the page shows what they logged,
headless Chromium renders it, and hostile or broken run folders render as data."""

import json
import shutil
import subprocess

import pytest
import torch

import omniopd
import toyworld
from omniopd_tools import view

TOY = [*toyworld.world_args("toy"), "--batch-size", "8", "--eval-size", "8", "--seed", "3", "--similarity", "lexical"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (.ci/run installs Debian's)")


def chromium(page, *options) -> str:
    """What headless Chromium prints for the page (--dump-dom: the DOM after every script could have run)."""
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--user-data-dir=" + str(page.parent / "chromium-profile"), *options, page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def elements_of(dom: str) -> list[tuple[str, list[str]]]:
    """Every element of a DOM as (tag, attribute names), read by a real HTML parser."""
    from html.parser import HTMLParser
    found = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, [name for name, _ in attrs]))
    Collect().feed(dom)
    return found


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "view.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def drafts_run(tmp_path_factory):
    """A real run of the default reading: 3 steps, an evaluation at step 2, so the first, an evaluation's and the
    last step are recorded."""
    out = tmp_path_factory.mktemp("view") / "run"
    assert omniopd.main([*TOY, "--steps", "3", "--eval-every", "2", "--out", str(out)]) == 0
    return out


def test_a_run_records_its_first_evaluated_and_last_steps_with_what_made_each_target(drafts_run):
    """Each recorded fork's p̂ is dirichlet_preference of its recorded S (α, κ from the run's config): the record
    holds the S the step used, not a copy of something else; q is a distribution; every fork sits in a rollout."""
    config = json.loads((drafts_run / "config.json").read_text())
    steps = records(drafts_run)
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert sum(len(r["forks"]) for r in steps) > 0
    for record in steps:
        assert len(record["rollouts"]) == 8 and all(r["correct"] in (True, False) for r in record["rollouts"])
        for fork in record["forks"]:
            rollout = record["rollouts"][fork["rollout"]]
            assert 0 <= fork["position"] < len(rollout["tokens"]) == len(rollout["entropy"])
            target = omniopd.dirichlet_preference(torch.tensor(fork["S"]), alpha=config["dirichlet_alpha"],
                                                  vote_temperature=config["vote_temperature"])
            assert target.tolist() == pytest.approx(fork["target"], abs=2e-4)
            assert sum(fork["q"]) == pytest.approx(1, abs=1e-3) and len(fork["q"]) == len(fork["drafts"])
    metrics = [json.loads(line) for line in (drafts_run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= m["pref/distance_to_q"] <= 1 for m in metrics if "pref/distance_to_q" in m)


@needs_chromium
def test_chromium_shows_the_forks_and_the_numbers_the_run_logged(drafts_run, tmp_path):
    """The page opens in a real browser; the DOM holds the first step's forks (their count), a draft's text and a
    heat-map cell whose value is the logged S; a screenshot is kept beside it."""
    assert view.main([str(drafts_run), "--out", str(tmp_path / "page.html")]) == 0
    page = tmp_path / "page.html"
    dom = chromium(page, "--dump-dom")
    first = records(drafts_run)[0]
    assert f'<span class="forkcount">{len(first["forks"])}</span>' in dom
    fork = first["forks"][0]
    assert view.escape(fork["drafts"][0]) in dom
    assert f'data-s="{fork["S"][0][0]:.4f}"' in dom and f">{fork['S'][0][0]:.3f}</td>" in dom
    assert dom.count('class="forkbox"') == sum(len(r["forks"]) for r in records(drafts_run))
    assert "<script" not in page.read_text() and "http" not in page.read_text().split("</style>")[0]
    chromium(page, f"--screenshot={tmp_path / 'page.png'}", "--window-size=1280,1600")
    assert (tmp_path / "page.png").stat().st_size > 20_000


HOSTILE = ["<script>document.title='pwned'</script>", '<img src=x onerror="document.title=\'pwned\'">',
           '"><svg onload="document.title=\'pwned\'">', "</textarea></pre></table><script>alert(1)</script>"]


def hostile_run(folder):
    """A run folder as an attacker would write it: markup in every text, broken and oversized lines, numbers that
    are not numbers, a config that is a list."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(["not", "an", "object"]))
    fork = {"rollout": 0, "position": 1, "drafts": HOSTILE, "teacher": HOSTILE, "S": [[0.5, "x", None, float("inf")]],
            "target": [0.4, 0.3, "<b>", 0.1], "q": [0.25] * 4, "compared": HOSTILE}
    rollout = {"question": HOSTILE[0], "reference": HOSTILE[1], "tokens": HOSTILE + ["ok"],
               "entropy": [1.0, "NaN", None, 2.0, 0.5], "correct": "<i>yes</i>"}
    lines = [json.dumps({"step": 1, "objective": HOSTILE[2], "rollouts": [rollout, "junk"], "forks": [fork, 7]}),
             "{not json", json.dumps([1, 2]), "[" * 100_000, json.dumps({"step": "2"}),
             json.dumps({"step": 3, "rollouts": {"a": 1}, "forks": None})]
    (folder / "view.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss/total": HOSTILE[0]}) + "\n"
                                          + json.dumps({"step": 2, "eval/accuracy": 0.5}) + "\n")
    return folder


def test_hostile_text_is_data_and_broken_records_are_skipped_with_a_note(tmp_path):
    run = hostile_run(tmp_path / "run")
    assert view.main([str(run)]) == 0
    text = (run / "view.html").read_text()
    assert "<script" not in text and "<img" not in text and "<svg onload" not in text and "onerror=\"" not in text
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in text
    assert "line(s) that are not a JSON object were skipped" in text and "config.json is missing or unreadable" in text


@needs_chromium
def test_hostile_text_runs_nothing_in_a_browser(tmp_path):
    """In Chromium the payloads stay text: the title is the page's own and no element they spell exists."""
    run = hostile_run(tmp_path / "run")
    view.main([str(run)])
    dom = chromium(run / "view.html", "--dump-dom")
    assert "<title>OmniOPD run: run</title>" in dom and "pwned</title>" not in dom
    elements = elements_of(dom)
    assert not {tag for tag, _ in elements} & {"script", "img", "iframe", "object", "embed", "textarea"}
    assert {tag for tag, _ in elements if tag == "svg"} and not [a for _, attrs in elements for a in attrs
                                                                 if a.startswith("on")]
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom   # shown as text


def test_a_huge_run_stays_a_page_a_browser_opens_and_shows_the_cut(tmp_path):
    """10,000 steps of metrics and 500 recorded steps, the first one written far past every cap (long texts, too
    many tokens, rollouts, forks and drafts): six steps shown, every cap applied with a visible mark, the page a
    few megabytes at most."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss/total": 1 / s, "forks/count": s % 7,
                                                           "bill/requests": 12, "bill/dollars": 0.002})
                                               + "\n" for s in range(1, 10_001)))
    long_text = "word " * 500   # 2,500 characters: past the cut
    many = 20                   # drafts, continuations and rollouts: past each cap
    fork = {"rollout": 0, "position": 3, "drafts": ["d"] * many, "teacher": ["t"] * many, "S": [[0.5] * many] * many,
            "target": [0.05] * many}
    big = {"objective": "drafts", "forks": [{**fork, "drafts": [long_text] * many}] + [fork] * 60, "rollouts": [
        {"question": long_text, "tokens": ["x"] * 2_000, "entropy": [0.1] * 2_000, "length": 5_000}] * many}
    small = {"objective": "drafts", "rollouts": [{"tokens": ["a", "b"], "entropy": [0.1, 0.2]}],
             "forks": [{"rollout": 0, "position": 1, "drafts": ["a", "b"], "teacher": ["a"], "S": [[1], [0]],
                        "target": [0.7, 0.3]}]}
    lines = [json.dumps({"step": 1, **big})] + [json.dumps({"step": s, **small}) for s in range(2, 501)]
    (run / "view.jsonl").write_text("\n".join(lines) + "\n")
    assert view.main([str(run)]) == 0
    text = (run / "view.html").read_text()
    assert text.count('<article class="step">') == 6 and "more characters]" in text and "more tokens not recorded" in text
    first = text[text.index('<h2 id="step-1">'):text.index('<h2 id="step-', text.index('<h2 id="step-1">') + 5)]
    assert first.count('class="rollout"') == view.MOST_ROLLOUTS and first.count('class="forkbox"') == view.MOST_FORKS
    assert first.count('<tr class="draft">') == view.MOST_FORKS * view.MOST_TEXTS
    assert len(text.encode()) < 10_000_000
    assert "teacher requests per step: 12 → 12" in text and "teacher dollars per step (--teacher-price): $0.0020" in text
    assert text.count("<polyline") == 4 and max(len(line.split("/>")[0]) for line in text.split("<polyline")[1:]) < 20_000


def test_the_audit_reading_and_a_run_missing_pieces_still_render(tmp_path):
    """The audit reading's page shows its own chunk with π̄ and π̂; a folder with nothing in it renders and says
    what is missing; a path that is not a folder is one line and exit 2."""
    out = tmp_path / "audit"
    assert omniopd.main([*TOY, "--objective", "audit", "--steps", "1", "--out", str(out)]) == 0
    chunks = records(out)[0]["forks"]
    assert chunks and all(len(c["drafts"]) == 1 and "pi_bar" in c for c in chunks)
    text = view.page(out)
    assert "π̂ (target)" in text and text.count('class="forkbox"') == len(chunks)
    empty = tmp_path / "empty"
    empty.mkdir()
    text = view.page(empty)
    assert "view.jsonl is missing or empty" in text and "metrics.jsonl is missing or empty" in text
    assert view.main([str(tmp_path / "nowhere")]) == 2


def test_a_planted_run_folder_cannot_redirect_the_page_or_hang_the_reader(tmp_path):
    """An attacker's run folder: view.html a link to a file of the user's, view.jsonl a link to /dev/zero (no line
    ever ends), metrics.jsonl a pipe (never ends). The page is written in the folder itself, the user's file is
    untouched, and the reader skips what is not a regular file with a note instead of hanging."""
    import os
    run = tmp_path / "run"
    run.mkdir()
    users_file = tmp_path / "bashrc"
    users_file.write_text("the user's own file\n")
    (run / "view.html").symlink_to(users_file)
    (run / "view.jsonl").symlink_to("/dev/zero")
    os.mkfifo(run / "metrics.jsonl")
    assert view.main([str(run)]) == 0
    assert users_file.read_text() == "the user's own file\n"
    assert not (run / "view.html").is_symlink()
    text = (run / "view.html").read_text()
    assert "view.jsonl is not a regular file" in text and "metrics.jsonl is not a regular file" in text
    # a line far longer than a record may be is skipped without being held whole
    (run / "view.jsonl").unlink()
    (run / "view.jsonl").write_text("x" * (view.RECORD_BYTES * 2) + "\n" + json.dumps({"step": 1}) + "\n")
    text = view.page(run)
    assert "1 line(s) that are not a JSON object were skipped" in text and 'id="step-1"' in text
