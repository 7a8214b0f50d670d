"""A self-contained HTML page about one memory snapshot and the run's memory metrics.

    python -m pmd_jax.memory.report <memory json | workdir | checkpoint step dir> --out report.html

A directory is searched for `memory*.json` in itself and in `memory/` (the train loop writes
`<workdir>/memory/memory_step_<N>.json`; the highest N wins, then the newest file). The metrics
are the first `metrics.jsonl` found in the snapshot's folder or up to three parents: one JSON
object per line with "step" and keys such as "memory/experience", "shortcut/<reason>",
"reflect/parse_failures", "reflect/requests" (counts of that step; the shortcut plot
accumulates them). Plots go into the page as data URIs and next to it as `<out stem>_growth.png`,
`_shortcuts.png`, `_parse.png`. Memory text is model output: it is always HTML-escaped, and the
page loads nothing from outside.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import pathlib
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pmd_jax.memory.export import load_memory_json

GROWTH_KEYS = ("memory/experience", "memory/insight", "memory/behaviour")
PARSE_KEYS = ("reflect/parse_failures", "reflect/requests")
SHORTCUT_PREFIX = "shortcut/"
METRICS_FILE = "metrics.jsonl"
PARENT_LEVELS = 3  # checkpoint step dir -> checkpoints -> workdir

_PAGE_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;
vertical-align:top;text-align:left}th{background:#f3f3f3}pre{white-space:pre-wrap;margin:0}
details{border:1px solid #ddd;border-radius:4px;margin:.4em 0;padding:.3em .6em}
summary{cursor:pointer}.note{color:#a33}.kind{font-size:.8em;color:#555}img{max-width:100%}
"""
# Hides every .searchable element whose text does not contain the query (case-insensitive).
_SEARCH_SCRIPT = """
function filterMemory(query){query=query.toLowerCase();
for(const el of document.querySelectorAll('.searchable')){
el.style.display=el.textContent.toLowerCase().includes(query)?'':'none';}}
"""


def _step_of(path: pathlib.Path) -> int:
    match = re.search(r"(\d+)\.json$", path.name)
    return int(match.group(1)) if match else -1


def find_memory_json(path: str | pathlib.Path) -> pathlib.Path:
    """The memory JSON a path names: the file itself, or the newest `memory*.json` of a folder."""
    path = pathlib.Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such memory json file or directory")
    found = sorted(path.glob("memory*.json")) + sorted(path.glob("memory/memory*.json"))
    if not found:
        raise FileNotFoundError(
            f"{path}: no memory*.json in it or in {path / 'memory'} (the train loop writes "
            "memory/memory_step_<N>.json at each checkpoint)"
        )
    return max(found, key=lambda p: (_step_of(p), p.stat().st_mtime))


def find_metrics(start: pathlib.Path) -> pathlib.Path | None:
    """The first metrics.jsonl in `start` or its parents (up to PARENT_LEVELS), else None."""
    folder = start.resolve()
    for candidate in [folder, *folder.parents][: PARENT_LEVELS + 1]:
        if (candidate / METRICS_FILE).is_file():
            return candidate / METRICS_FILE
    return None


def load_metrics(path: pathlib.Path) -> tuple[list[dict[str, Any]], str | None]:
    """Metric records merged per step, sorted by step; and a note when a last line was truncated.

    Later lines for a step update earlier ones (a resumed run rewrites its steps). A malformed
    line raises, naming file and line, unless it is the last one (a crash mid-write).
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    by_step: dict[int, dict[str, Any]] = defaultdict(dict)
    note = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = record["step"]
            if not isinstance(step, int | float) or isinstance(step, bool):
                raise ValueError(f"step {step!r} is not a number")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            if number == len(lines):
                note = f"{path}:{number}: last line unreadable ({err}), skipped"
                continue
            raise ValueError(f"{path}:{number}: not a metrics record with a step ({err})") from err
        by_step[int(step)].update(record)
    return [by_step[step] for step in sorted(by_step)], note


def _series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps [n], values [n]) of the records that have a numeric `key`."""
    pairs = [
        (r["step"], float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)
    ]
    return np.array([p[0] for p in pairs], float), np.array([p[1] for p in pairs], float)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _axes(title: str, ylabel: str):
    figure = Figure(figsize=(7, 3.6))
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel("training step")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def growth_plot(records: list[dict[str, Any]]) -> bytes | None:
    """PNG of the occupied count of each level over steps, one panel per level (their scales
    differ by orders of magnitude); None when no level was logged."""
    levels = [(key, *_series(records, key)) for key in GROWTH_KEYS]
    levels = [(key, steps, values) for key, steps, values in levels if len(steps)]
    if not levels:
        return None
    figure = Figure(figsize=(7, 1.2 + 1.6 * len(levels)), layout="constrained")
    panels = figure.subplots(len(levels), 1, sharex=True, squeeze=False)[:, 0]
    figure.suptitle("Memory size per level")
    for axes, (key, steps, values), color in zip(panels, levels, ("C0", "C1", "C2"), strict=False):
        axes.plot(steps, values, marker=".", color=color)
        axes.set_ylabel(f"{key.split('/')[1]}\nitems")
        axes.grid(alpha=0.3)
    panels[-1].set_xlabel("training step")
    return _png(figure)


def shortcut_plot(records: list[dict[str, Any]]) -> bytes | None:
    """PNG of cumulative shortcut-filter drops per reason; None when no reason was logged."""
    reasons = sorted({k for r in records for k in r if k.startswith(SHORTCUT_PREFIX)})
    if not reasons:
        return None
    figure, axes = _axes("Reflection items dropped by the shortcut filter", "cumulative items")
    for key in reasons:
        steps, values = _series(records, key)
        axes.plot(steps, np.cumsum(values), marker=".", label=key[len(SHORTCUT_PREFIX) :])
    axes.legend(fontsize="small")
    return _png(figure)


def parse_plot(records: list[dict[str, Any]]) -> bytes | None:
    """PNG of the reflection parse-failure rate per step and cumulative; None without data."""
    rows = [
        (r["step"], float(r[PARSE_KEYS[0]]), float(r[PARSE_KEYS[1]]))
        for r in records
        if all(isinstance(r.get(k), int | float) for k in PARSE_KEYS) and r[PARSE_KEYS[1]] > 0
    ]
    if not rows:
        return None
    steps, failures, requests = (np.array(column, float) for column in zip(*rows, strict=True))
    overall = failures.sum() / requests.sum()
    figure, axes = _axes(f"Reflection parse failures (overall {overall:.1%})", "failure rate")
    axes.plot(steps, failures / requests, marker=".", label="per step")
    axes.plot(steps, np.cumsum(failures) / np.cumsum(requests), label="cumulative")
    axes.set_ylim(-0.02, 1.02)
    axes.legend()
    return _png(figure)


def _cell(value: Any) -> str:
    return f"<td>{html.escape(str(value))}</td>"


def _header_row(*names: str) -> str:
    return "<tr>" + "".join(f"<th>{name}</th>" for name in names) + "</tr>"


def _text_cell(text: str) -> str:
    return f"<td><pre>{html.escape(text)}</pre></td>"


def behaviour_table(behaviours: list[dict[str, Any]]) -> str:
    """HTML table of the bank, oldest first."""
    if not behaviours:
        return "<p>The behaviour bank is empty.</p>"
    rows = [
        f'<tr class="searchable">{_cell(b["name"])}{_text_cell(b["instruction"])}'
        f"{_cell(b['source_cluster'])}{_cell(b['created_step'])}{_cell(b['updated_step'])}</tr>"
        for b in sorted(behaviours, key=lambda b: (b["created_step"], b["slot"]))
    ]
    header = _header_row("name", "instruction", "cluster", "created", "updated")
    return f"<table>{header}{''.join(rows)}</table>"


def problem_sections(data: dict[str, Any]) -> str:
    """One <details> per problem with its question, insights and experience."""
    experience, insights = defaultdict(list), defaultdict(list)
    for item in data["experience"]:
        experience[item["problem_id"]].append(item)
    for item in data["insights"]:
        insights[item["problem_id"]].append(item)
    texts = data.get("problem_texts", {})
    sections = []
    for problem_id in sorted(set(experience) | set(insights)):
        rollouts = sorted(experience[problem_id], key=lambda e: e["slot"])
        successes = sum(e["kind"] == "success" for e in rollouts)
        question = texts.get(str(problem_id), "")
        summary = (
            f"problem {problem_id}: {successes} successes, {len(rollouts) - successes} "
            f"failures, {len(insights[problem_id])} insights"
            + (f" | {question[:80]}{'...' if len(question) > 80 else ''}" if question else "")
        )
        parts = [f"<summary>{html.escape(summary)}</summary>"]
        if question:
            parts.append(f"<pre>{html.escape(question)}</pre>")
        items = [
            f'<li><span class="kind">{html.escape(i["kind"])}, step {i["step"]}</span> '
            f"<b>{html.escape(i['title'])}</b>: {html.escape(i['content'])}</li>"
            for i in sorted(insights[problem_id], key=lambda i: (i["kind"], i["slot"]))
        ]
        if items:
            parts.append(f"<ul>{''.join(items)}</ul>")
        rows = [
            f"<tr>{_cell(e['kind'])}{_cell(format(e['reward'], 'g'))}{_cell(e['step'])}"
            f"{_text_cell(e['response'])}{_text_cell(e['feedback'])}</tr>"
            for e in rollouts
        ]
        if rows:
            header = _header_row("kind", "reward", "step", "response", "feedback")
            parts.append(f"<table>{header}{''.join(rows)}</table>")
        sections.append(f'<details class="searchable">{"".join(parts)}</details>')
    return "".join(sections) or "<p>No experience or insights stored.</p>"


def _image(png: bytes, alt: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}"></p>'


def render_page(
    data: dict[str, Any], source: str, plots: dict[str, bytes], metrics_note: str
) -> str:
    """The whole HTML page; `plots` maps a title to PNG bytes, `metrics_note` is shown above."""
    sizes = "".join(f"<tr>{_cell(k)}{_cell(v)}</tr>" for k, v in data.get("sizes", {}).items())
    config = html.escape(json.dumps(data.get("config", {}), indent=1))
    images = "".join(_image(png, title) for title, png in plots.items())
    step = "unknown" if data.get("step") is None else data["step"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Memory report</title>
<style>{_PAGE_STYLE}</style><script>{_SEARCH_SCRIPT}</script></head><body>
<h1>Procedural memory at step {html.escape(str(step))}</h1>
<p>Source: <code>{html.escape(source)}</code>{" (frozen)" if data.get("frozen") else ""}</p>
<table>{sizes}</table>
<details><summary>MemoryConfig</summary><pre>{config}</pre></details>
<h2>Training curves</h2><p class="note">{html.escape(metrics_note)}</p>{images}
<p><input type="search" placeholder="filter behaviours and problems by text"
 oninput="filterMemory(this.value)" size="40"></p>
<h2>Behaviour bank ({len(data["behaviours"])})</h2>{behaviour_table(data["behaviours"])}
<h2>Experience and insights by problem</h2>{problem_sections(data)}
</body></html>
"""


def write_report(
    memory_path: pathlib.Path, out: pathlib.Path, metrics_path: pathlib.Path | None
) -> list[pathlib.Path]:
    """Write the page and its PNG files; returns the written paths (the HTML first)."""
    data = load_memory_json(memory_path)
    plots, note, written = {}, "", []
    out.parent.mkdir(parents=True, exist_ok=True)
    if metrics_path is None:
        note = f"No {METRICS_FILE} found next to {memory_path} or in its parents: plots skipped."
    else:
        records, note = load_metrics(metrics_path)
        note = f"Metrics from {metrics_path} ({len(records)} steps). {note or ''}"
        makers = {"growth": growth_plot, "shortcuts": shortcut_plot, "parse": parse_plot}
        for name, make in makers.items():
            png = make(records)
            if png is None:
                note += f" No data for the {name} plot in {metrics_path}."
                continue
            plots[name] = png
            written.append(out.with_name(f"{out.stem}_{name}.png"))
            written[-1].write_bytes(png)
    out.write_text(render_page(data, str(memory_path), plots, note.strip()), encoding="utf-8")
    return [out, *written]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see the module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=pathlib.Path, help="memory json, workdir or checkpoint dir")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("report.html"))
    parser.add_argument("--metrics", type=pathlib.Path, help="metrics.jsonl (default: searched)")
    args = parser.parse_args(argv)
    if args.metrics is not None and not args.metrics.is_file():
        parser.error(f"--metrics {args.metrics}: no such file")
    try:
        memory_path = find_memory_json(args.path)
        metrics_path = args.metrics or find_metrics(memory_path.parent)
        written = write_report(memory_path, args.out, metrics_path)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
