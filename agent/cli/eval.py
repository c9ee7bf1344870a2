"""`kger eval`: Recall@1/5/10, MRR and nDCG@10 for every stage of the agent against ground truth."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from agent.cli.common import (
    SHOWN, BatchError, ChromaUrlOpt, ConcurrencyOpt, HomeOpt, JsonOpt, JudgeOpt, LlmOpt, RoundsOpt, StoreOpt, StrictOpt,
    err_console,
    open_assistant, out_console, print_json, progress, report_skipped, start,
)
from agent.core.limits import DEFAULT_ROUNDS, MAX_K
from agent.core.render import line, literal, plural


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _delta(x: float) -> str:
    if abs(x) < 1e-12:
        return "[dim]0.0[/dim]"
    return f"[green]+{100 * x:.1f}[/green]" if x > 0 else f"[red]{100 * x:.1f}[/red]"


def metrics_table(metrics: dict[str, dict], deltas: list[dict], title: Text) -> Table:
    from agent.core.evaluate import METRICS, STAGE_HELP

    caption = "\n".join(f"{s}: {STAGE_HELP[s]}" for s in metrics if s in STAGE_HELP)
    t = Table(title=title, title_justify="left", caption=caption + "\ndeltas in percentage points",
              caption_justify="left")
    t.add_column("stage")
    for m in METRICS:
        t.add_column(m + " %", justify="right")
    for stage, m in metrics.items():
        t.add_row(stage, *(_pct(m[k]) for k in METRICS))
    t.add_section()
    for d in deltas:
        t.add_row(f"{d['to']} - {d['from']}", *(_delta(d[k]) for k in METRICS))
    return t


def tune_table(tuned: dict) -> Table:
    from agent.core.evaluate import METRICS

    t = Table(title=f"Fusion tuning (seed {tuned['seed']}: tuned on {len(tuned['split']['tune'])} queries, "
                    f"tested on {len(tuned['split']['test'])})", title_justify="left")
    t.add_column("split")
    t.add_column("fusion")
    for m in METRICS:
        t.add_column(m + " %", justify="right")
    for split in ("tune", "test"):
        for which in ("default", "best"):
            m = tuned[split][which]
            t.add_row(split, which, *(_pct(m[k]) for k in METRICS))
    return t


def _describe(cfg: dict) -> str:
    if cfg["strategy"] == "rrf":
        return f"rrf k={cfg['rrf_k']}"
    return (f"{cfg['strategy']} w_retrieval={cfg['w_retrieval']:g} w_judge={cfg['w_judge']:g} "
            f"decay={cfg['decay']:g} judge_pos_weight={cfg['judge_pos_weight']:g}")


def evaluate(
    gt: Annotated[Path, typer.Argument(help="Ground truth: ENTRep t2i.json ({description: image}), a CSV "
                                            "(query,image or query,class) or JSON {query: class}.")],
    llm: LlmOpt = "offline",
    k: Annotated[int, typer.Option("--k", "-k", min=1,
                                   help=f"Candidates per query (at most {MAX_K}); every stage is ranked over "
                                        "these.")] = 20,
    labels: Annotated[Optional[Path], typer.Option(
        "--labels", help="cls.json or CSV giving each image's class for class-level ground truth; it decides "
                         "which classes exist (any granularity). Region names (ear, nose, throat, larynx) are "
                         "accepted as truth too. Default: the labels the store was indexed with.")] = None,
    tune_fusion: Annotated[bool, typer.Option(
        "--tune-fusion", help="Search fusion settings on one half of the queries, report them on the other.")] = False,
    split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of the tune/test split.")] = 0,
    concurrency: ConcurrencyOpt = 4,
    store: StoreOpt = "default",
    chroma_url: ChromaUrlOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
    strict: StrictOpt = False,
    rounds: RoundsOpt = DEFAULT_ROUNDS,
    judge: JudgeOpt = "image",
):
    """Recall@1/5/10, MRR and nDCG@10 for each stage (ensemble, agent retrieval, judge, fused), with deltas.

    One traced agent run per query gives every stage (its answer keeps all K candidates and their scores).
    Queries whose relevant images are not in the store are listed and left out.
    """
    turn = start(home, llm, k, pool=k).with_(kind="eval", rounds=rounds)  # every candidate is ranked: pool = k
    from agent.assistant import require_no_fallback
    from agent.core import evaluate as ev
    from agent.core.queries import read_ground_truth

    parsed = read_ground_truth(gt)
    report_skipped("ground truth", parsed.skipped, parsed.unit)
    label_map = None
    if labels is not None:
        from retrieval.labels import read_labels

        label_map = read_labels(labels)
    assistant = open_assistant(store, chroma_url, llm, k, pool=k, concurrency=concurrency, judge=judge)
    records_meta = assistant.searcher.gallery.all_metadata()
    resolved, excluded = ev.resolve_truth(parsed.items, records_meta, label_map)
    for x in excluded[:SHOWN]:
        err_console.print(line("[yellow]excluded[/yellow] ", literal(f"{parsed.unit} {x['line']} {x['query']!r}: {x['reason']}")))
    if len(excluded) > SHOWN:
        err_console.print(f"... and {len(excluded) - SHOWN} more excluded (all listed in --json)")
    if not resolved:
        raise BatchError(f"none of the {len(parsed.items)} queries in {gt} has a relevant image in store '{store}'")
    store_labels = sum(1 for _, m in records_meta if m.get("label"))

    records: list[ev.EvalRecord] = []
    failed = []
    with progress(disable=json_out) as bar:
        task = bar.add_task("Evaluating", total=len(resolved))
        for truth, relevant in resolved:
            try:
                answer = assistant.ask(truth.query, turn)
                if answer.status == "error":  # a store or model failure is a failed query, not an empty ranking
                    raise RuntimeError(answer.error)
                if strict:
                    require_no_fallback(answer)
                ensemble = [r.id for r in assistant.searcher.text(truth.query, k=k)]
            except Exception as e:
                failed.append({"query": truth.query, "error": f"{type(e).__name__}: {e}"})
                err_console.print(line("[red]failed[/red] ", literal(f"{truth.query!r}: {type(e).__name__}: {e}")))
            else:
                records.append(ev.EvalRecord(truth.query, relevant, ev.stage_rankings(answer, ensemble),
                                             answer.rows, answer.run_id))
            bar.advance(task)
    if not records:
        raise BatchError(f"every query failed ({failed[0]['error']})")

    metrics = ev.stage_metrics(records)
    deltas = ev.deltas(metrics)
    tuned = ev.tune_fusion(records, seed=split_seed) if tune_fusion else None
    doc = {
        "gt": str(gt), "store": store, "llm": llm, "k": k, "queries": len(parsed.items),
        "evaluated": len(records), "excluded": excluded, "failed": failed,
        "bad_entries": [{parsed.unit: s.line, "reason": s.reason} for s in parsed.skipped],
        "store_images": len(records_meta), "store_labelled": store_labels,
        "class_truth": "labels file" if label_map is not None else "store labels",
        "stages": metrics, "deltas": deltas, "tune_fusion": tuned,
        "per_query": [{"query": r.query, "run_id": r.run_id, "relevant": sorted(r.relevant),
                       "first_hit": {s: ev.first_hit(ids, r.relevant) for s, ids in r.rankings.items()},
                       "rankings": r.rankings} for r in records],
    }
    if json_out:
        print_json(doc)
        _strict_exit(strict, failed)
        return
    out_console.print(metrics_table(metrics, deltas, literal(f"{gt.name}: {len(records)} queries, store '{store}', "
                                                          f"--llm {llm}, {k} candidates")))
    out_console.print(f"{len(excluded)} queries excluded (relevant images not in the store), {len(failed)} failed, "
                      f"{plural(len(parsed.skipped), 'bad ' + parsed.unit)}.")
    if store_labels:
        out_console.print(f"[yellow]note:[/yellow] {store_labels} of {len(records_meta)} stored images carry a label. "
                          "The planner's filters and the offline judge read labels, so only the ensemble stage is "
                          "blind to them. For a blind test, index the images without labels and give their classes "
                          "with --labels FILE.")
    if tuned:
        out_console.print(tune_table(tuned))
        best = "the default" if tuned["best"] == tuned["default"] else _describe(tuned["best"])
        out_console.print(f"default: {_describe(tuned['default'])}\nbest:    {best} ({tuned['tied_best']} of "
                          f"{tuned['grid_size']} settings tie on the tuning half; a tie goes to the default)")
    _strict_exit(strict, failed)


def _strict_exit(strict: bool, failed: list[dict]) -> None:
    """--strict: a query that failed (a fallback included) makes the run exit 1, after its report."""
    if strict and failed:
        err_console.print(f"Error: --strict: {len(failed)} queries failed or fell back (listed above)")
        raise typer.Exit(1)
