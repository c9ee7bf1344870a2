"""The agent: graph state, nodes, tools, judges, Pos-Fuse and the kger command line."""
import retrieval  # noqa: F401  (sets the OpenMP wait policy before torch loads)
