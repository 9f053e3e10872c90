"""See what the method sees: one self-contained HTML page per run, `python -m omniopd_tools.view RUN_FOLDER`.

It reads only what the run wrote: config.json, metrics.jsonl (the curves, the bill) and view.jsonl (the steps a run
records for it: the first, each evaluation's and the last; every step with --view-every 1). For each shown step:
every rollout with H_t as shading and its forks (or audited chunks) marked where they fall; for each fork the K
drafts with q and p̂ as bars (the audit reading: its own chunk with π̄ and π̂), what each draft was compared by, the
M teacher continuations, and S (K × M) as a heat map, each continuation's vote (its highest S) marked. Above them,
the run's curves: accuracy, loss, forks per step, how far p̂ moves q, and the teacher's bill per step.

Everything read is untrusted data: each text is escaped (a continuation holding <script> shows as text and runs
nothing; the page holds no script at all), each number is checked to be one, and every text, list and step count
is capped with a visible cut, so a run of 10,000 steps still gives a page a browser opens in seconds. A run missing
pieces (no view.jsonl, an interrupted run, an old metrics log) renders what it has and says what is missing.

    python -m omniopd_tools.view runs/omniopd            # -> runs/omniopd/view.html
    python -m omniopd_tools.view RUN --all --out page.html
"""

import argparse
import html
import json
import math
import os
import sys
from pathlib import Path

# what a run records is re-capped on reading (the folder is untrusted) at the limits the run wrote it with
from omniopd_lib.tracking import RECORD_FORKS as MOST_FORKS, RECORD_ROLLOUTS as MOST_ROLLOUTS
from omniopd_lib.tracking import RECORD_TOKENS as MOST_TOKENS, TEXT_LIMIT, VIEW_RECORDS

SHOWN_STEPS = 6            # the first, the last and evenly between, unless --all
MOST_STEPS = 200           # even --all shows at most this many steps
MOST_TEXTS = 16            # drafts or continuations per fork
CURVE_POINTS = 400         # points per curve (a long run's steps are sampled evenly)
RECORD_BYTES = 4_000_000   # a line longer than this is skipped, not parsed
FILE_BYTES = 200_000_000   # and no file is read past this


def escape(text, limit: int = TEXT_LIMIT) -> str:
    """Any value as HTML text: escaped (quotes too), cut to `limit` characters with a visible mark."""
    text = text if isinstance(text, str) else json.dumps(text) if text is not None else ""
    cut = ""
    if len(text) > limit:
        cut = f'<span class="cut">… [cut: {len(text) - limit:,} more characters]</span>'
        text = text[:limit]
    return html.escape(text, quote=True).replace("\n", "⏎<br>") + cut


def number(value, default=None):
    """A finite float from untrusted JSON, or default."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return default
    return float(value)


def read_jsonl(path: Path, notes: list) -> list[dict]:
    """The JSON objects of a .jsonl file; bad or oversized lines are skipped and counted in notes. Only a regular
    file is read (a device or a pipe planted in a run folder would never end), a line at most RECORD_BYTES at a
    time, and the file at most FILE_BYTES."""
    if not path.exists():
        return []
    if not path.is_file():
        notes.append(f"{path.name} is not a regular file: not read")
        return []
    records, bad, read = [], 0, 0
    with open(path, "rb") as file:
        while read < FILE_BYTES:
            line = file.readline(RECORD_BYTES + 1)
            if not line:
                break
            read += len(line)
            if len(line) > RECORD_BYTES:
                bad += 1
                while line and not line.endswith(b"\n") and read < FILE_BYTES:   # the rest of that line
                    line = file.readline(RECORD_BYTES + 1)
                    read += len(line)
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                bad += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
    if bad:
        notes.append(f"{path.name}: {bad} line(s) that are not a JSON object were skipped")
    return records


def step_of(record):
    step = number(record.get("step"))
    return None if step is None or step < 0 else int(step)


# ── the run-level panel: curves as inline SVG ───────────────────────────────────────────────────────────────────────

def curve_svg(points: list[tuple[float, float]], title: str, fmt: str = "{:.3g}") -> str:
    """One small line chart (x: step) as inline SVG, with its first and last value written out."""
    if not points:
        return ""
    if len(points) > CURVE_POINTS:
        stride = len(points) / CURVE_POINTS
        points = [points[int(i * stride)] for i in range(CURVE_POINTS)] + [points[-1]]
    width, height, pad = 320, 120, 6
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = lambda x: pad + (width - 2 * pad) * ((x - x0) / (x1 - x0) if x1 > x0 else 0.5)  # noqa: E731
    sy = lambda y: height - pad - (height - 2 * pad) * ((y - y0) / (y1 - y0) if y1 > y0 else 0.5)  # noqa: E731
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5"/>' for x, y in points) if len(points) < 30 else ""
    return (f'<figure class="curve"><figcaption>{escape(title)}: {escape(fmt.format(ys[0]))} → '
            f'{escape(fmt.format(ys[-1]))} (steps {int(x0)}–{int(x1)}; range {escape(fmt.format(y0))} to '
            f'{escape(fmt.format(y1))})</figcaption><svg width="{width}" height="{height}" role="img">'
            f'<polyline points="{path}"/>{dots}</svg></figure>')


def accuracy_curve(run: Path, notes: list) -> list[tuple[float, float]]:
    """(step, held-out accuracy) from each evaluation's records, eval-step-NNNNNN.jsonl (the one before training
    included, which metrics.jsonl does not hold): the share of records whose "correct" is true."""
    points = []
    for path in sorted(run.glob("eval-step-*.jsonl"))[:MOST_STEPS * 10]:
        digits = path.stem.removeprefix("eval-step-")
        graded = [r.get("correct") for r in read_jsonl(path, notes)]
        if digits.isdigit() and graded:
            points.append((int(digits), sum(g is True for g in graded) / len(graded)))
    return points


def run_panel(run: Path, metrics: list[dict], notes: list) -> str:
    """Accuracy (each evaluation's records), loss, forks per step, p̂'s distance from q, and the bill per step (the
    rest from metrics.jsonl)."""
    def series(key):
        return [(step_of(m), number(m.get(key))) for m in metrics
                if step_of(m) is not None and number(m.get(key)) is not None]
    charts = [curve_svg(accuracy_curve(run, notes) or series("eval/accuracy"), "held-out accuracy", "{:.1%}"),
              curve_svg(series("loss/total"), "loss"),
              curve_svg(series("forks/count") or series("audit/chunks"), "forks (audit: chunks) per step", "{:.0f}"),
              curve_svg(series("pref/distance_to_q"), "½ Σ|p̂ − q| (how far the target moves the student)"),
              curve_svg(series("pref/own_draft") or series("audit/pi_hat"), "p̂ on the student's own draft (audit: π̂)"),
              curve_svg(series("bill/requests"), "teacher requests per step", "{:.0f}"),
              curve_svg(series("bill/tokens"), "teacher tokens per step", "{:.0f}"),
              curve_svg(series("bill/dollars"), "teacher dollars per step (--teacher-price)", "${:.4f}")]
    charts = [c for c in charts if c]
    if not charts:
        return '<p class="missing">metrics.jsonl has no curves to draw.</p>'
    return '<div class="curves">' + "".join(charts) + "</div>"


# ── one recorded step ──────────────────────────────────────────────────────────────────────────────────────────────

def shade(value, top) -> str:
    """A background whose strength is value/top (H_t against the step's highest)."""
    alpha = 0.0 if not top else max(0.0, min(1.0, value / top))
    return f"background: rgba(230, 120, 20, {alpha * 0.75:.2f})"


def heat(value) -> str:
    """A heat-map cell's colour for S in [0, 1] (values outside are clipped for the colour, never for the text)."""
    v = max(0.0, min(1.0, value))
    return f"background: rgba(40, 90, 200, {v * 0.85:.2f}); color: {'#fff' if v > 0.55 else '#000'}"


def bar(value, label) -> str:
    width = max(0.0, min(1.0, value)) * 100
    return (f'<span class="bar" title="{escape(label)} {value:.3f}"><span style="width: {width:.0f}%"></span></span>'
            f' <span class="num">{value:.3f}</span>')


def numbers(values, limit=MOST_TEXTS) -> list:
    return [number(v, 0.0) for v in values[:limit]] if isinstance(values, list) else []


def texts(values, limit=MOST_TEXTS) -> list:
    return list(values[:limit]) if isinstance(values, list) else []


def rollout_html(r: int, rollout: dict, forks_here: list[tuple[int, int]]) -> str:
    """One rollout: its question, its tokens shaded by H_t with the forks marked, and right/wrong where known."""
    tokens = texts(rollout.get("tokens"), MOST_TOKENS)
    entropy = numbers(rollout.get("entropy"), MOST_TOKENS)
    top = max(entropy, default=0.0)
    at = {position: f for f, position in forks_here}
    spans = []
    for t, token in enumerate(tokens):
        h = entropy[t] if t < len(entropy) else 0.0
        mark = f'<sup class="forkmark">{at[t] + 1}</sup>' if t in at else ""
        klass = ' class="fork"' if t in at else ""
        spans.append(f'<span{klass} style="{shade(h, top)}" title="t={t} H={h:.3f}">{mark}{escape(token, 200)}</span>')
    length = number(rollout.get("length"), len(tokens))
    cut = (f'<span class="cut">… [{int(length) - len(tokens):,} more tokens not recorded]</span>'
           if length > len(tokens) else "")
    correct = rollout.get("correct")
    badge = ('<span class="badge right">right</span>' if correct is True else
             '<span class="badge wrong">wrong</span>' if correct is False else '<span class="badge">unchecked</span>')
    return (f'<div class="rollout" id="r{r}"><div class="question"><b>rollout {r}</b> {badge} '
            f'{escape(rollout.get("question", ""))}</div><div class="tokens">{"".join(spans)}{cut}</div>'
            f'<details><summary>reference answer</summary><pre>{escape(rollout.get("reference", ""))}</pre>'
            f'</details></div>')


def fork_html(f: int, fork: dict, audit: bool) -> str:
    """One fork: the drafts with q and p̂ (audit: π̄ and π̂), what each was compared by, the teacher's
    continuations, and S as a K × M heat map with each continuation's vote (its highest S) marked."""
    drafts, teacher = texts(fork.get("drafts")), texts(fork.get("teacher"))
    target, q = numbers(fork.get("target")), numbers(fork.get("q"))
    compared = texts(fork.get("compared"))
    matrix = [numbers(row) for row in texts(fork.get("S"))]
    votes = {m: max(range(len(matrix)), key=lambda k: matrix[k][m] if m < len(matrix[k]) else -1.0)
             for m in range(max((len(row) for row in matrix), default=0))} if matrix else {}
    where = f"rollout {escape(fork.get('rollout'))}, token {escape(fork.get('position'))}"
    rows = []
    for k, draft in enumerate(drafts):
        weight = target[k] if k < len(target) else 0.0
        own = "own chunk" if audit else ("draft 1 (its own)" if k == 0 else f"draft {k + 1}")
        student = (bar(number(fork.get("pi_bar"), 0.0), "π̄") if audit else
                   bar(q[k], "q") if k < len(q) else '<span class="missing">not recorded</span>')
        carried = (f'<div class="compared">compared by: {escape(compared[k])}</div>'
                   if k < len(compared) and compared[k] != draft else "")
        rows.append(f'<tr class="draft"><th>{own}</th><td class="text">{escape(draft)}{carried}</td>'
                    f'<td>{student}</td><td>{bar(weight, "π̂" if audit else "p̂")}</td></tr>')
    head = "<th>π̄ (student)</th><th>π̂ (target)</th>" if audit else "<th>q (student)</th><th>p̂ (target)</th>"
    heat_rows = "".join(
        f'<tr><th>{"own" if audit else f"d{k + 1}"}</th>'
        + "".join(f'<td class="cell{" vote" if votes.get(m) == k and not audit else ""}" style="{heat(s)}" '
                  f'data-s="{s:.4f}">{s:.3f}</td>' for m, s in enumerate(row)) + "</tr>"
        for k, row in enumerate(matrix))
    heat_head = "".join(f"<th>t{m + 1}</th>" for m in range(max((len(r) for r in matrix), default=0)))
    continuations = "".join(f'<li><b>t{m + 1}</b> {escape(text)}</li>' for m, text in enumerate(teacher))
    return (f'<section class="forkbox" id="f{f}"><h4>{"chunk" if audit else "fork"} {f + 1} · {where}</h4>'
            f'<table class="drafts"><tr><th></th><th>{"chunk" if audit else "draft"}</th>{head}</tr>{"".join(rows)}'
            f'</table><div class="pair"><table class="heat"><caption>{"φ" if audit else "S"}'
            f'{"" if audit else " (outlined: the draft each continuation votes for most)"}</caption>'
            f'<tr><th></th>{heat_head}</tr>{heat_rows}</table><ol class="teacher">{continuations}</ol></div></section>')


def step_html(record: dict) -> str:
    """One recorded step: its rollouts, then its forks."""
    audit = record.get("objective") == "audit"
    forks = texts(record.get("forks"), MOST_FORKS)
    rollouts = texts(record.get("rollouts"), MOST_ROLLOUTS)
    by_rollout = {}
    for f, fork in enumerate(forks):
        if isinstance(fork, dict) and number(fork.get("rollout")) is not None and number(fork.get("position")) is not None:
            by_rollout.setdefault(int(fork["rollout"]), []).append((f, int(fork["position"])))
    parts = [f'<h2 id="step-{step_of(record)}">step {step_of(record)} <small>({escape(record.get("objective", ""))}; '
             f'{len(rollouts)} rollouts, <span class="forkcount">{len(forks)}</span> '
             f'{"chunks" if audit else "forks"})</small></h2>']
    placed = set()
    for r, rollout in enumerate(rollouts):   # each rollout, then its forks
        if isinstance(rollout, dict):
            parts.append(rollout_html(r, rollout, by_rollout.get(r, [])))
            parts += [fork_html(f, forks[f], audit) for f, _ in by_rollout.get(r, [])]
            placed |= {f for f, _ in by_rollout.get(r, [])}
    if not rollouts:
        parts.append('<p class="missing">this step recorded no rollouts.</p>')
    parts += [fork_html(f, fork, audit) for f, fork in enumerate(forks) if isinstance(fork, dict) and f not in placed]
    if not forks and record.get("objective") != "baseline":
        parts.append('<p class="missing">no fork of this step got a target (no teacher answer, or no fork).</p>')
    return '<article class="step">' + "".join(parts) + "</article>"


def chosen(records: list[dict], show_all: bool) -> list[dict]:
    """The first, the last and evenly between (SHOWN_STEPS in all); with show_all, every step up to MOST_STEPS."""
    wanted = MOST_STEPS if show_all else SHOWN_STEPS
    if len(records) <= wanted:
        return records
    picks = sorted({round(i * (len(records) - 1) / (wanted - 1)) for i in range(wanted)})
    return [records[i] for i in picks]


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.4em; } h2 { border-top: 2px solid #888; padding-top: .5em; }
.curves { display: flex; flex-wrap: wrap; gap: 1em; } figure.curve { margin: 0; }
figcaption { font-size: 12px; max-width: 320px; } svg { background: #f6f6f6; }
polyline { fill: none; stroke: #2a5bd7; stroke-width: 1.6; } circle { fill: #2a5bd7; }
.rollout { margin: .6em 0; padding: .4em; border: 1px solid #ddd; }
.tokens { font-family: ui-monospace, monospace; white-space: pre-wrap; word-break: break-word; }
.tokens .fork { outline: 2px solid #c00; } sup.forkmark { color: #c00; font-weight: bold; }
.badge { padding: 0 .4em; border-radius: 3px; background: #ddd; font-size: 12px; }
.badge.right { background: #2e7d32; color: #fff; } .badge.wrong { background: #c62828; color: #fff; }
.forkbox { margin: .8em 0 1.2em; padding: .5em; background: #fafafa; border-left: 4px solid #c00; }
table.drafts td.text { font-family: ui-monospace, monospace; white-space: pre-wrap; max-width: 700px; }
.compared { color: #666; font-size: 12px; } .bar { display: inline-block; width: 90px; height: 10px;
  background: #eee; vertical-align: middle; } .bar span { display: block; height: 10px; background: #2a5bd7; }
.pair { display: flex; gap: 1em; align-items: flex-start; }
table.heat td { width: 3.2em; text-align: center; font-size: 12px; } td.vote { outline: 2px solid #c00; }
ol.teacher { font-family: ui-monospace, monospace; white-space: pre-wrap; list-style: none; padding: 0; }
.cut, .missing { color: #a33; font-style: italic; } .num { font-size: 12px; }
"""


def page(run: Path, show_all: bool = False, title: str = "") -> str:
    """The whole page as one HTML string: every style inline, no script, no outside resource. title: what the
    heading calls the run (default: its folder)."""
    notes = []
    config = {}
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        pass
    if not isinstance(config, dict) or not config:
        config = {}
        notes.append("config.json is missing or unreadable: the run's settings are not shown")
    metrics = read_jsonl(run / "metrics.jsonl", notes)
    records = sorted((r for r in read_jsonl(run / VIEW_RECORDS, notes) if step_of(r) is not None), key=step_of)
    if not metrics:
        notes.append("metrics.jsonl is missing or empty: no curves")
    if not records:
        notes.append("view.jsonl is missing or empty (a run from before the page existed, or one stopped before its "
                     "first step): no step's forks to show")
    last = max((step_of(m) or 0 for m in metrics), default=0)
    if config.get("steps") and last < number(config.get("steps"), 0):
        notes.append(f"the run stopped at step {last} of {int(number(config['steps'], 0))} (interrupted, or still "
                     "running)")
    settings = ", ".join(f"{key} {escape(config[key], 200)}" for key in (
        "method", "objective", "student", "teacher", "data", "horizon", "similarity", "num_drafts", "teacher_samples",
        "chunk_len", "steps", "lr", "seed") if key in config)
    panel = run_panel(run, metrics, notes)
    shown = chosen(records, show_all)
    index = " · ".join(f'<a href="#step-{step_of(r)}">step {step_of(r)}</a>' for r in shown)
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>OmniOPD run: " + escape(title or run.name, 200)
            + "</title><style>" + STYLE + "</style></head><body>"
            + f"<h1>OmniOPD run <code>{escape(title or str(run), 500)}</code></h1><p>{settings}</p>"
            + "".join(f'<p class="missing">{escape(note)}</p>' for note in notes)
            + "<h2>the run</h2>" + panel
            + f"<p>recorded steps: {len(records)}; shown: {len(shown)}"
            + ("" if len(shown) == len(records) else " (first, last and evenly between; --all shows every one)")
            + f"</p><p>{index}</p>" + "".join(step_html(r) for r in shown) + "</body></html>")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder (what omniopd.py --out or scale/train.py --out wrote)")
    parser.add_argument("--all", action="store_true", help=f"every recorded step (at most {MOST_STEPS})")
    parser.add_argument("--out", default="", help="where to write the page (default: RUN/view.html)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not run.is_dir():
        print(f"error: {run} is not a run folder", file=sys.stderr)
        return 2
    target = Path(args.out) if args.out else run / "view.html"
    try:
        # a view.html planted as a link in an untrusted run folder must not redirect the write elsewhere
        if target.is_symlink():
            target.unlink()
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(page(run, args.all))
    except OSError as error:
        print(f"error: cannot write {target}: {error.strerror}", file=sys.stderr)
        return 2
    print(f"{target} ({target.stat().st_size / 1024:.0f} KB): open it in a browser, no server needed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
