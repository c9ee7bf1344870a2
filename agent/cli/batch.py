"""`kger batch`: answer a file of queries through the whole agent, resumably, one JSON line per query."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from agent.cli.common import (
    SHOWN, BatchError, ChromaUrlOpt, ConcurrencyOpt, HomeOpt, JsonOpt, KOpt, JudgeOpt, LlmOpt, PoolOpt, RoundsOpt, StoreOpt,
    StrictOpt,
    err_console, open_assistant, out_console, print_json, progress, report_skipped, start,
)
from agent.core.limits import DEFAULT_ROUNDS
from agent.core.render import line, literal, plural
from retrieval.errors import InputError

if TYPE_CHECKING:
    from agent.core.queries import Query
    from agent.state import Answer

try:
    import fcntl
except ImportError:  # Windows: no lock against two batch runs appending to one file
    fcntl = None  # type: ignore[assignment]


# -- the results file --------------------------------------------------------------------------------------

def read_results(path: Path) -> tuple[dict[str, dict], list[tuple[int, str]]]:
    """query -> its latest line (a retry after an error replaces the error), and unreadable lines."""
    latest: dict[str, dict] = {}
    bad: list[tuple[int, str]] = []
    if not path.is_file():
        return latest, bad
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append((n, f"not valid JSON ({e.msg})"))
                continue
            if not isinstance(doc, dict) or not isinstance(doc.get("query"), str):
                bad.append((n, "no 'query' field"))
                continue
            latest[doc["query"]] = doc
    return latest, bad


class ResultsWriter:
    """Appends one JSON line per query, flushed and fsynced, so a crash loses at most the line being written.

    Holds an exclusive lock on the file from before it is read until the run ends: two batch runs on one
    --out would otherwise both answer the missing queries and interleave their lines.
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.f = open(path, "a", encoding="utf-8")
        if fcntl is not None:
            try:
                fcntl.flock(self.f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.f.close()
                raise BatchError(f"another kger batch is writing {path}; wait for it or choose another --out") from None
        self.repaired = self._repair_tail()

    def _repair_tail(self) -> bool:
        """Cut an incomplete last line (a crash mid-write) so the next line starts on a line of its own."""
        with open(self.path, "rb") as f:
            data = f.read()
        if not data or data.endswith(b"\n"):
            return False
        os.ftruncate(self.f.fileno(), data.rfind(b"\n") + 1)
        return True

    def write(self, doc: dict) -> None:
        from store.redact import record

        self.f.write(json.dumps(record(doc), ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:  # a full disk: the old file stays whole and no partial .tmp is left
        tmp.unlink(missing_ok=True)
        raise


def submission(lines: list[dict]) -> dict[str, str]:
    """ENTRep Track 3: {query: top-1 image file name} for every query that has an answer."""
    return {d["query"]: d["rows"][0]["name"] for d in lines if not d.get("error") and d.get("rows")}


def report_runs(lines: list[dict]) -> list[dict]:
    """Each line's full trace record (plan, candidates, verdicts, fusion) where the trace DB has it."""
    from store.paths import traces_db_path
    from store.traces import TraceDB, UnknownRunError

    runs = []
    path = traces_db_path()
    db = TraceDB(path, reader=True) if path.is_file() else None  # a read: never writes traces.db
    try:
        for d in lines:
            run = None
            if db is not None and d.get("run_id"):
                try:
                    run = db.get_run(d["run_id"])
                except UnknownRunError:
                    run = None
            runs.append(run or {
                "id": d.get("run_id") or "", "input": d["query"], "status": "error" if d.get("error") else "ok",
                "error": d.get("error"), "llm": d.get("llm"), "store": d.get("store"),
                "answer": {"rows": d.get("rows", []), "question": d["query"], "timings": d.get("timings", {})},
            })
    finally:
        if db is not None:
            db.close()
    return runs


def answer_line(query: Query, answer: Answer, store: str, k: int) -> dict:
    """The results file's line for an answered query (the rows as `AnswerRow.model_dump()` writes them)."""
    return {"query": query.text, "line": query.line, "run_id": answer.run_id, "thread_id": answer.thread_id,
            "llm": answer.llm, "store": store, "k": k, "constraints": answer.constraints,
            "rows": [r.model_dump() for r in answer.rows], "timings": answer.timings, "fallbacks": answer.fallbacks,
            "error": None}


def error_line(query: Query, failed: BaseException | Answer, llm: str, store: str, k: int) -> dict:
    """The line of a query that got no answer: an exception, or an answer whose store or model failed (its run
    id leads to the trace). A rerun retries every line with an error."""
    if isinstance(failed, BaseException):
        run_id, error = None, f"{type(failed).__name__}: {failed}"
    else:
        run_id, error = failed.run_id, failed.error or "the turn failed"
    return {"query": query.text, "line": query.line, "run_id": run_id, "thread_id": None, "llm": llm, "store": store,
            "k": k, "constraints": {}, "rows": [], "timings": {}, "error": error}


def _stdin_queries() -> Path:
    """stdin as a .txt query file (one query a line), kept under KGER_HOME so a rerun can be compared."""
    import hashlib
    import sys

    from agent.cli.ask import read_text_arg
    from store.paths import kger_home

    text = read_text_arg("-", "queries") + "\n"
    path = kger_home() / "stdin" / f"queries-{hashlib.sha256(text.encode()).hexdigest()[:12]}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def batch(
    queries: Annotated[Path, typer.Argument(help="Queries: .txt (one a line), .csv (query/text column, or ENTRep "
                                                 "t2i.csv), .jsonl ({\"query\": ...}) or ENTRep t2i.json; "
                                                 "'-': one a line from stdin.")],
    out: Annotated[Path, typer.Option("--out", help="Results, one JSON line per query; a rerun skips what it holds.")],
    submission_path: Annotated[Optional[Path], typer.Option(
        "--submission", help="Also write the ENTRep Track 3 submission JSON {query: top-1 image}.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Also write an HTML report of the answers.")] = None,
    llm: LlmOpt = "offline",
    k: KOpt = 10,
    pool: PoolOpt = 20,
    concurrency: ConcurrencyOpt = 4,
    store: StoreOpt = "default",
    chroma_url: ChromaUrlOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
    strict: StrictOpt = False,
    rounds: RoundsOpt = DEFAULT_ROUNDS,
    judge: JudgeOpt = "image",
):
    """Answer every query of a file through the whole agent; resumable, one traced run per query.

    Bad lines in the query file are reported and skipped; a failing query gets a line with its error.
    A rerun with the same --out answers only what is missing, and retries failed queries.
    """
    turn = start(home, llm, k, pool).with_(kind="batch", rounds=rounds)
    from agent.assistant import require_no_fallback
    from agent.cli.checks import out_file
    from agent.core.queries import read_queries

    for path, flag in ((out, "--out"), (submission_path, "--submission"), (report, "--report")):
        if path is not None:
            out_file(path, flag)
    from agent.outputs import require_distinct
    from store.diskfull import is_no_space

    require_distinct({"QUERIES": queries, "--out": out, "--submission": submission_path, "--report": report})
    if str(queries) == "-":
        queries = _stdin_queries()
    parsed = read_queries(queries)
    report_skipped("queries", parsed.skipped, parsed.unit)
    stats = {"done": 0, "failed": 0, "fallback_rows": 0, "fallback_queries": 0, "cache_hits": 0}
    failures = []
    fallback_reasons: dict[str, int] = {}  # what stood in for --llm gemini, and why: queries per reason
    interrupted, skipped = False, 0
    writer = ResultsWriter(out)
    try:
        if writer.repaired:
            err_console.print(line(literal(out, style="yellow"), ": dropped an incomplete last line (an interrupted write)"))
        previous, bad_out = read_results(out)
        for n, why in bad_out:
            err_console.print(line(literal(f"{out} line {n}", style="yellow"), ": ", literal(why), ", ignored"))
        done = {q for q, d in previous.items() if not d.get("error")}
        todo = [q for q in parsed.items if q.text not in done]
        skipped = len(parsed.items) - len(todo)
        other = {d.get("llm") for q, d in previous.items() if q in done} - {llm}
        if skipped and other:
            err_console.print(line("[yellow]note:[/yellow] ", literal(
                f"{out} already holds answers made with --llm {', '.join(sorted(map(str, other)))}; "
                "they are kept, not redone")))
        if todo:
            assistant = open_assistant(store, chroma_url, llm, k, pool=pool, concurrency=concurrency, judge=judge)
            with progress(disable=json_out) as bar:
                task = bar.add_task("Answering", total=len(todo))
                for q in todo:
                    try:
                        answer = assistant.ask(q.text, turn)
                        for note in answer.fallbacks:
                            fallback_reasons[note] = fallback_reasons.get(note, 0) + 1
                        if strict and answer.status == "ok":
                            require_no_fallback(answer)
                        doc = (answer_line(q, answer, store, k) if answer.status == "ok"
                               else error_line(q, answer, llm, store, k))
                    except Exception as e:  # one bad query must not stop the other hundreds
                        if is_no_space(e):  # ... but a full disk stops them all: nothing more can be kept
                            raise
                        doc = error_line(q, e, llm, store, k)
                    if doc["error"]:
                        stats["failed"] += 1
                        failures.append({"query": q.text, "line": q.line, "error": doc["error"]})
                        err_console.print(line("[red]failed[/red] ", literal(f"{parsed.unit} {q.line}: {doc['error']}")))
                    else:
                        stats["done"] += 1
                        fb = sum(1 for r in doc["rows"] if r.get("fallback"))
                        stats["fallback_rows"] += fb
                        stats["fallback_queries"] += bool(fb)
                        stats["cache_hits"] += sum(1 for r in doc["rows"] if r.get("cached"))
                    writer.write(doc)
                    bar.advance(task)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        writer.close()

    results, _ = read_results(out)
    in_order = [results[q.text] for q in parsed.items if q.text in results]
    unanswered = []
    if submission_path:
        sub = submission(in_order)
        _write_atomic(submission_path, json.dumps(sub, indent=2, ensure_ascii=False) + "\n")
        unanswered = [{parsed.unit: q.line, "query": q.text,
                       "error": (results.get(q.text) or {}).get("error") or ("no answer yet" if q.text not in results
                                                                            else "no image found")}
                      for q in parsed.items if q.text not in sub]
    if report:
        from agent.core.report import render_batch

        _write_atomic(report, render_batch(report_runs(in_order), title=f"kger batch: {queries.name}"))

    summary = {
        "queries": len(parsed.items), "done": stats["done"], "skipped": skipped, "failed": stats["failed"],
        "bad_lines": [{parsed.unit: s.line, "reason": s.reason} for s in parsed.skipped],
        "judge_fallbacks": {"rows": stats["fallback_rows"], "queries": stats["fallback_queries"]},
        "cache_hits": stats["cache_hits"], "interrupted": interrupted, "out": str(out),
        "answered_in_file": sum(1 for d in in_order if not d.get("error")),
        "submission": str(submission_path) if submission_path else None,
        "report": str(report) if report else None, "failures": failures,
        "unanswered_in_submission": unanswered,
        "fallbacks": [{"what": note, "queries": n} for note, n in fallback_reasons.items()],
    }
    if json_out:
        print_json(summary)
    else:
        out_console.print(literal(
            f"{stats['done']} answered, {skipped} already in {out}, {stats['failed']} failed, "
            f"{plural(len(parsed.skipped), 'bad ' + parsed.unit)} skipped; judge fallbacks in {stats['fallback_rows']} rows "
            f"({stats['fallback_queries']} queries), {stats['cache_hits']} cached verdicts."))
        for path, what in ((submission_path, "submission"), (report, "report")):
            if path:
                out_console.print(literal(f"{what}: {path}", limit=None))
    for u in unanswered[:SHOWN]:  # the submission is incomplete: every missing query is named
        err_console.print(line(f"[yellow]not in the submission[/yellow] {parsed.unit} {u[parsed.unit]}: ",
                               literal(f"{u['query']} ({u['error']})")))
    if len(unanswered) > SHOWN:
        err_console.print(f"... and {len(unanswered) - SHOWN} more queries not in the submission (all listed in --json)")
    for note, n in list(fallback_reasons.items())[:SHOWN]:
        err_console.print(line(f"[yellow]fallback[/yellow] in {n} queries: ", literal(note)), soft_wrap=True)
    if interrupted:
        err_console.print(literal(f"Interrupted: rerun the same command to finish ({out} keeps every finished query)."))
        raise typer.Exit(130)
    if stats["failed"]:
        err_console.print(literal(f"Error: {stats['failed']} queries failed (their lines in {out} say why); rerun to retry them"))
        raise typer.Exit(1)
