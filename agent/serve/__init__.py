"""`kger serve`: one warm process (bundle, store, graph loaded once) behind an HTTP JSON API and MCP tools.

service.py owns what a request may do (bounds, the one lock); http.py and mcp_tools.py are two doors to it.
"""
