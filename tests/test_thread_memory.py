"""A conversation thread stays the size of one turn (issue 20 §1): the bytes a turn writes into checkpoints.db
do not grow with the thread, the thread keeps one checkpoint, follow-ups still read the previous answer, and a
file written before threads were bounded is compacted when it is opened."""
from __future__ import annotations

import sqlite3

from langchain_core.messages import HumanMessage

from agent.assistant import Assistant
from agent.core.limits import MAX_ROUNDS, MAX_TOOL_CALLS
from agent.judges.offline import OfflineJudge
from agent.persist import open_records

TURNS = ("left ear, tympanic membrane", "only the right side", "more like number 2", "nose, right nasal cavity",
         "only the left side", "vocal cords open")


def counted(saver) -> list[int]:
    """Bytes the saver serializes (every checkpoint and write goes through its serializer once)."""
    total = [0]
    dumps = saver.serde.dumps_typed

    def counting(obj):
        out = dumps(obj)
        total[0] += len(out[1])
        return out

    saver.serde.dumps_typed = counting
    return total


def rows(path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


def test_200_turns_checkpoint_bytes_per_turn_stay_flat(word_searcher, kger_home):
    _, saver = open_records()
    written = counted(saver)
    assistant = Assistant(searcher=word_searcher, judge=OfflineJudge(), k=3, pool=6, checkpointer=saver)
    request = assistant.turn(thread="t1", kind="chat")
    per_turn, answers = [], []
    for n in range(200):
        before = written[0]
        answers.append(assistant.ask(TURNS[n % len(TURNS)], request))
        per_turn.append(written[0] - before)
    early, late = sum(per_turn[12:24]) / 12, sum(per_turn[188:200]) / 12  # two whole cycles of TURNS each
    assert abs(late - early) <= 0.1 * early, (early, late)
    db = kger_home / "checkpoints.db"
    assert rows(db, "select count(*) from checkpoints") == [(1,)]  # one checkpoint: what the next turn needs
    messages = assistant.graph.get_state({"configurable": {"thread_id": "t1"}}).values["messages"]
    assert isinstance(messages[0], HumanMessage) and messages[0].content == TURNS[199 % len(TURNS)]
    # this turn's only: its description, then per round of the corrective loop one AI message of tool calls and
    # their results (agent/reflect.py), the reply; bounded by the turn's limits, never by the thread's length
    assert [m for m in messages if isinstance(m, HumanMessage)] == messages[:1]
    assert len(messages) <= 1 + (1 + MAX_ROUNDS) + MAX_TOOL_CALLS + 1, [type(m).__name__ for m in messages]
    # the follow-ups at the end of the thread still read the previous turn
    left = answers[196]  # "only the left side" after "nose, right nasal cavity"
    assert left.input == "only the left side" and left.question == "nose, left nasal cavity"
    assert [r.label for r in left.rows[:2]] == ["nose-left"] * 2  # the fake store has two of each class
    like = answers[194]  # "more like number 2" after "only the right side"
    assert like.status == "ok" and like.constraints == answers[193].constraints
    assert answers[193].rows[1].id not in {r.id for r in like.rows}


def test_an_old_unbounded_thread_is_compacted_on_open(word_searcher, kger_home, monkeypatch):
    import agent.assistant as assistant_mod

    # as kger wrote threads before: every checkpoint of every turn, the whole message list in each
    with monkeypatch.context() as m:
        m.setattr(assistant_mod, "keep_latest", lambda saver, thread: None)
        m.setattr(assistant_mod, "turn_input", lambda q: {"messages": [HumanMessage(content=q)]})
        _, saver = open_records()
        old = Assistant(searcher=word_searcher, judge=OfflineJudge(), k=3, pool=6, checkpointer=saver)
        for text in TURNS[:4] * 3:
            old.ask(text, old.turn(thread="old", kind="chat"))
        saver.conn.execute("pragma user_version = 0")
        saver.conn.close()
    db = kger_home / "checkpoints.db"
    assert rows(db, "select count(*) from checkpoints")[0][0] > 12

    _, saver = open_records()  # compacts, once
    assert rows(db, "select count(*) from checkpoints") == [(1,)] and rows(db, "pragma user_version") == [(1,)]
    after = Assistant(searcher=word_searcher, judge=OfflineJudge(), k=3, pool=6, checkpointer=saver)
    state = after.graph.get_state({"configurable": {"thread_id": "old"}}).values
    assert not state.get("messages") and state["answer"].question == "nose, right nasal cavity"
    answer = after.ask("only the left side", after.turn(thread="old", kind="chat"))  # the thread goes on
    assert answer.question == "nose, left nasal cavity" and [r.label for r in answer.rows[:2]] == ["nose-left"] * 2


def test_an_in_memory_thread_keeps_one_checkpoint(word_searcher):
    assistant = Assistant(searcher=word_searcher, judge=OfflineJudge(), k=3, pool=6)
    for text in TURNS:
        answer = assistant.ask(text, assistant.turn(thread="m", kind="chat"))
    assert answer.status == "ok"
    assert len(list(assistant.checkpointer.list({"configurable": {"thread_id": "m"}}))) == 1
