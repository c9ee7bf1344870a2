"""Self-contained HTML pages for runs: one run (`kger trace export --format html`) or a batch (`kger batch --report`).

A page must open years later on another machine, offline: the thumbnails are inlined as base64 JPEG data
URIs, the style is inline, there is no script, and every piece of text (descriptions, model answers,
paths) is escaped, because a description or an LLM answer is untrusted input.
"""
from __future__ import annotations

import base64
import html
import io
import json
from functools import lru_cache
from typing import Any, Iterable, Optional

from agent.core.events import read_events
from agent.judges.base import match_score
from retrieval.printable import visible

THUMB_SIDE = 160  # px, longest side of an inlined thumbnail
THUMB_QUALITY = 80  # JPEG quality

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#1d1d1f;background:#fff}
h1{font-size:1.5rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.5rem}
h3{font-size:1.05rem;margin-top:1.4rem}
table{border-collapse:collapse;margin:.5rem 0;width:100%}
th,td{border:1px solid #ddd;padding:.25rem .45rem;text-align:left;vertical-align:top}
th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code,pre,.formula{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f9;padding:.4rem;margin:0}
.thumbs{display:flex;flex-wrap:wrap;gap:.8rem;margin:.6rem 0}
figure{margin:0;width:160px;text-align:center}figure img{width:160px;height:auto;border-radius:6px;background:#000}
figcaption{font-size:12px;word-break:break-all}.missing{width:160px;height:120px;background:#eee;display:flex;
align-items:center;justify-content:center;color:#888;border-radius:6px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1rem;margin:.4rem 0}dt{color:#666}dd{margin:0}
.dim{color:#777}.err{color:#b00020}.demoted{color:#8a5a00}details{margin:.4rem 0}summary{cursor:pointer}
"""


def e(value: Any) -> str:
    """Escaped text for element content and attribute values alike; a NUL or other control character is
    shown as `\\xNN`, never written raw (retrieval/printable.py)."""
    return html.escape(visible("" if value is None else str(value)), quote=True)


@lru_cache(maxsize=512)
def thumbnail_data_uri(path: str, side: int = THUMB_SIDE) -> Optional[str]:
    """The circle-cropped image as a small JPEG data URI, or None where the file cannot be read."""
    from retrieval.preprocess import ImageLoadError, circle_crop, load_image

    try:
        img = circle_crop(load_image(path)).convert("RGB")
    except ImageLoadError:
        return None
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=THUMB_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def fmt_num(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def class_text(c: dict) -> str:
    """The known label, else the predicted class with its probability, else '-'."""
    if c.get("label"):
        return c["label"]
    if c.get("predicted"):
        prob = c.get("predicted_prob")
        return f"{c['predicted']}?" + (f" {prob:.2f}" if prob is not None else "")
    return "-"


def call_text(call: dict) -> str:
    """A tool call as the planner made it: name(arg=json, ...)."""
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in (call.get("args") or {}).items())
    return f"{call.get('name')}({args})"


def kept_text(rf) -> str:
    """What the loop kept of a corrective round's new images (agent/reflect.keep_improving)."""
    n = len(rf.kept) + len(rf.dropped)
    return (f"kept {len(rf.kept)} of the {n} new images the last round judged (those above the turn's best so "
            f"far, or meeting the description while too few did); the other {len(rf.dropped)} stay out of the "
            "fusion")


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """Cells must be escaped HTML already; a cell starting with '\\x00num' is right-aligned."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if cell.startswith("\x00num"):
                cells.append(f'<td class="num">{cell[4:]}</td>')
            else:
                cells.append(f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{e(cls)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def match_of(r: dict) -> Optional[int]:
    """The row's 0-100 match (the judge's score); computed for runs stored before rows carried it."""
    return r["match"] if r.get("match") is not None else match_score(r.get("judge"))


def _n(v: Any, fmt: str = ".3f") -> str:
    return "\x00num" + e(fmt_num(v, fmt))


def _thumbs(rows: list[dict]) -> str:
    figs = []
    for r in rows:
        uri = thumbnail_data_uri(str(r.get("path") or ""))
        label = f"#{r['rank']} {r.get('name') or r['id'][:12]}"
        img = (f'<img src="{e(uri)}" alt="{e(label)}" title="{e(r.get("path"))}">' if uri
               else f'<div class="missing" title="{e(r.get("path"))}">image not found</div>')
        figs.append(f"<figure>{img}<figcaption><b>#{e(r['rank'])}</b> {e(class_text(r))}<br>"
                    f"<span class=\"dim\">{e(r.get('name') or r['id'][:12])}</span></figcaption></figure>")
    return f'<div class="thumbs">{"".join(figs)}</div>' if figs else ""


def _answer_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        why = e(r.get("justification"))
        if r.get("fallback"):
            why += f' <span class="dim">(offline judge: {e(r["fallback"])})</span>'
        if r.get("cached"):
            why += ' <span class="dim">(cached)</span>'
        if r.get("demoted"):
            why += f' <span class="demoted">(ranked last: {e(r["demoted"])})</span>'
        out.append([e(r["rank"]), f"<code>{e(r.get('name') or r['id'][:12])}</code>", e(class_text(r)),
                    _n(match_of(r), "d"), _n(r.get("retrieval")), _n(r.get("fused"), ".4f"),
                    f'<span class="formula">{e(r.get("formula"))}</span>', why])
    # the match (the judge's 0-100) first; fused only orders this answer, its arithmetic beside it
    return _table(("#", "image", "class", "match", "retrieval", "fused", "Pos-Fuse formula", "why"), out, "answer")


def _details(summary: str, body: str, open_: bool) -> str:
    return f"<details{' open' if open_ else ''}><summary>{summary}</summary>{body}</details>"


def _run_section(run: dict, heading: str = "h2", open_details: bool = True, anchor: Optional[str] = None) -> str:
    ev = read_events(run)
    answer = run.get("answer") or {}
    rows = answer.get("rows") or []
    by_id = ev.candidates_by_id()

    def name(image_id: str) -> str:
        return by_id.get(image_id, {}).get("name") or (image_id or "?")[:12]

    run_id = run.get("id") or answer.get("run_id") or ""
    question = run.get("input") or answer.get("input") or answer.get("question") or ""
    anchor = anchor or f"run-{run_id}"
    parts = [f'<section class="run" id="{e(anchor)}"><{heading}>{e(question)}</{heading}>']
    meta = {"run id": run_id, "kind": run.get("kind"), "status": run.get("status"), "created": run.get("created"),
            "llm": run.get("llm") or answer.get("llm"), "store": run.get("store"), "bundle": run.get("bundle"),
            "thread": run.get("thread_id"), "judged question": answer.get("question")}
    parts.append("<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in meta.items() if v) + "</dl>")
    if run.get("error"):
        parts.append(f'<p class="err">Error: {e(run["error"])}</p>')

    parts.append("<h3>Answer</h3>")
    if rows:
        parts.append(_thumbs(rows) + _answer_table(rows))
    else:
        parts.append('<p class="dim">No image in the answer.</p>')

    plan = ev.plan
    if plan is not None:
        calls = "".join(f"<li><code>{e(call_text(c))}</code></li>" for c in plan.tool_calls)
        body = (f"<p>planner: {e(plan.planner)}; fallback: {e(plan.fallback or 'none')}; "
                f"{e(fmt_num(plan.ms, '.1f'))} ms</p><ul>{calls}</ul>")
        parts.append(_details("<b>Plan</b>: tool calls", body, open_details))

    ret = ev.candidates
    if ret is not None:
        cands = ret.candidates
        crow = [[e(c.get("rank")), f"<code>{e(c.get('name') or c['id'][:12])}</code>", e(class_text(c)),
                 _n(c.get("score")), "\x00num" + e(" ".join(f"{s:.3f}" for s in c.get("fold_scores") or []) or "-"),
                 e({True: "match", False: "outside", None: ""}[c.get("filter_match")]), e(c.get("query"))]
                for c in cands]
        body = _table(("#", "image", "class", "cosine", "per fold", "filter", "query"), crow, "candidates")
        body += "".join(f'<p class="err">tool error: {e(x)}</p>' for x in ret.errors)
        parts.append(_details(f"<b>Retrieve</b>: {len(cands)} candidates", body, open_details))

    jud = ev.verdicts
    if jud is not None:
        vrows = []
        for v in jud.verdicts:
            status = f"fallback: {v['fallback']}" if v.get("fallback") else ("cached" if v.get("cached") else "fresh")
            raw = v.get("raw")
            vrows.append([f"<code>{e(name(v.get('id')))}</code>", _n(v.get("score"), ".2f"),
                          e(f"{v.get('judge')} ({v.get('model')})"), e(status), e(v.get("justification")),
                          f"<pre>{e(raw)}</pre>" if raw is not None else '<span class="dim">(none)</span>'])
        body = (f"<p>question judged: {e(jud.question)}; {e(fmt_num(jud.ms, '.1f'))} ms</p>"
                + _table(("image", "score", "judge", "status", "justification", "raw answer"), vrows, "verdicts"))
        parts.append(_details(f"<b>Judge</b>: {e(jud.judge)}", body, open_details))

    for rf in ev.rounds:  # the corrective loop (agent/reflect.py): one decision per round
        calls = "".join(f"<li><code>{e(call_text(c))}</code></li>" for c in rf.calls)
        notes = "".join(f"<p>{e(x)}</p>" for x in (kept_text(rf) if rf.kept or rf.dropped else None, rf.clarify,
                                                   rf.notice) if x)
        body = (f"<p>{e(rf.reason)}; triggers: {e('; '.join(rf.triggers) or 'none')}</p><ul>{calls}</ul>{notes}"
                f"<pre>{e(json.dumps(rf.signals))}</pre>")
        parts.append(_details(f"<b>Reflect, round {rf.round + 1}</b>: {e(rf.decision)}", body, open_details))

    fuse = ev.fuse
    if fuse is not None:
        cfg = fuse.config
        frows = []
        for i, r in enumerate(fuse.table, start=1):
            formula = f'<span class="formula">{e(r.get("formula"))}</span>'
            if r.get("demoted"):
                formula += f' <span class="demoted">(ranked last: {e(r["demoted"])})</span>'
            frows.append([e(i), f"<code>{e(name(r.get('id')))}</code>", _n(r.get("retrieval_rank"), "d"),
                          _n(r.get("judge_rank"), "d"), _n(r.get("judge_score"), ".2f"), _n(r.get("final"), ".4f"),
                          formula])
        body = (f"<p>config: <code>{e(json.dumps(cfg))}</code>; constraints: "
                f"<code>{e(json.dumps(fuse.constraints))}</code></p>"
                + _table(("#", "image", "retrieval rank", "judge rank", "judge score", "final", "formula"), frows,
                         "fuse"))
        parts.append(_details(f"<b>Pos-Fuse</b> ({e(cfg.get('strategy', '?'))})", body, open_details))

    timings = run.get("timings") or answer.get("timings") or {}
    if timings:
        parts.append("<p class=\"dim\">timings: " + e(", ".join(f"{k} {v} ms" for k, v in timings.items())) + "</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{e(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def render_run(run: dict) -> str:
    """One run (a `TraceDB.get_run` record) as a self-contained HTML page."""
    title = f"kger run {str(run.get('id', ''))[:12]}: {run.get('input') or ''}"
    body = f"<h1>kger run <code>{e(str(run.get('id', ''))[:12])}</code></h1>\n" + _run_section(run)
    return _page(title, body)


def _anchor(run_id: Optional[str], position: int) -> str:
    """A run's section id; a line that failed before its run was recorded has no id, so use its position."""
    return f"run-{run_id}" if run_id else f"line-{position}"


def render_batch(runs: list[dict], title: str) -> str:
    """Many runs (get_run records, or bare answers) as one page: a summary table, then one section each."""
    summary = []
    for i, run in enumerate(runs, start=1):
        answer = run.get("answer") or {}
        rows = answer.get("rows") or []
        run_id = run.get("id") or answer.get("run_id") or ""
        top = f"{rows[0].get('name') or rows[0]['id'][:12]} ({class_text(rows[0])})" if rows else "-"
        question = run.get("input") or answer.get("input") or answer.get("question") or ""
        summary.append([e(i), f'<a href="#{e(_anchor(run_id, i))}">{e(question)}</a>', e(top),
                        _n(match_of(rows[0]) if rows else None, "d"), e(run.get("status") or ""),
                        f"<code>{e(run_id[:12])}</code>"])
    body = [f"<h1>{e(title)}</h1>", f"<p>{len(runs)} run(s).</p>",
            _table(("#", "description", "top image", "match", "status", "run"), summary, "summary")]
    for i, run in enumerate(runs, start=1):
        run_id = run.get("id") or (run.get("answer") or {}).get("run_id")
        body.append(_run_section(run, open_details=False, anchor=_anchor(run_id, i)))
    return _page(title, "\n".join(body))
