"""Where a session's records go: traces and conversation checkpoints under KGER_HOME.

Why a module of its own: both files can be damaged or unwritable, and neither may stop a question from being
answered. A damaged file is moved aside and replaced (store.db.open_db, which keeps it and says so); a
read-only home answers without a trace or with in-memory checkpoints, said once, in one line.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver

    from store.traces import TraceDB

log = logging.getLogger("kger.store")


def open_records() -> tuple[Optional["TraceDB"], Optional["BaseCheckpointSaver"]]:
    """(traces, checkpointer); either is None where the home cannot be written."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    from agent.graph import serializer
    from store.checkpoints import compact, db_size
    from store.db import ReadOnlyStateError, open_db
    from store.paths import checkpoints_db_path, kger_home, traces_db_path
    from store.traces import TraceDB

    traces = checkpointer = None
    read_only = []
    try:
        traces = TraceDB(traces_db_path())
        if traces.read_only:
            traces.close()
            traces = None
            read_only.append("traces")
    except ReadOnlyStateError:
        read_only.append("traces")

    def setup(db) -> None:
        db.row_factory = None  # SqliteSaver reads plain tuples
        SqliteSaver(db, serde=serializer()).setup()
        before = db_size(checkpoints_db_path())
        threads = compact(db, serializer())  # once, for a file written before threads were bounded
        if threads:
            log.warning("checkpoints.db: %d conversation threads kept to their last turn (%s -> %s bytes); the full "
                        "records stay in traces.db", threads, f"{before:,}", f"{db_size(checkpoints_db_path()):,}")

    try:
        checkpointer = SqliteSaver(open_db(checkpoints_db_path(), "the conversation checkpoints", setup),
                                   serde=serializer())
    except ReadOnlyStateError:
        read_only.append("checkpoints")
    if read_only:
        log.warning("%s is read-only: answering without writing %s (no run is recorded for `kger trace`)",
                    kger_home(), " or ".join(read_only))
    return traces, checkpointer
