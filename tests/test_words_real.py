"""A clinician's words on the real store (issue 23): the clinic note returns the requested region, and a typo
that was corrected is shown once and kept in the trace."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agent.assistant import Assistant
from agent.cli import app
from tests.test_reading import NOTE


@pytest.fixture
def assistant(real_store, monkeypatch):
    home, _ = real_store
    monkeypatch.setenv("KGER_HOME", str(home))
    return Assistant.open("default", k=5, pool=20)


def test_the_clinic_note_returns_the_requested_larynx(assistant):
    """History, negatives in every section, then "Please find images of the glottis ...": before, 6 nose-left and
    2 throat images; now one search, for the larynx, and only vocal-cord images."""
    ans = assistant.ask(NOTE)
    assert ans.status == "ok" and len(ans.rows) == 5
    assert all(r.label in ("vc-open", "vc-closed") for r in ans.rows), [r.label for r in ans.rows]
    assert ans.constraints.get("region") == "larynx" and "side" not in ans.constraints
    plan = next(e for e in assistant.traces.get_run(ans.run_id)["events"] if e["node"] == "plan")["payload"]
    assert len(plan["tool_calls"]) == 1
    query = plan["tool_calls"][0]["args"]["query"]
    assert "glottis" in query and "polyp" not in query and "intact" not in query
    assert not any("bilateral" in (r.justification or "") for r in ans.rows)


def test_a_corrected_typo_is_shown_once_and_traced(real_store, monkeypatch):
    home, _ = real_store
    monkeypatch.setenv("KGER_HOME", str(home))
    r = CliRunner().invoke(app, ["ask", "rigth eer drum perforaton"])
    assert r.exit_code == 0, r.output
    assert r.stdout.count("read 'rigth' as 'right'") == 1 and "read 'eer' as 'ear'" in r.stdout
    run_id = r.stdout.strip().splitlines()[-1].split()[1]
    from store.traces import TraceDB

    with TraceDB(home / "traces.db") as db:
        run = db.get_run(run_id)
    plan = next(e for e in run["events"] if e["node"] == "plan")["payload"]
    assert "read 'rigth' as 'right'" in plan["corrections"]
    assert plan["tool_calls"][0]["args"]["query"] == "right ear drum perforation"
    assert plan["tool_calls"][0]["args"]["side"] == "right"
    answer = run["answer"] if isinstance(run["answer"], dict) else json.loads(run["answer"])
    assert "read 'perforaton' as 'perforation'" in answer["corrections"]
    assert all(row["label"] == "ear-right" for row in answer["rows"])
