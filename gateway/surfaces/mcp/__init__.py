"""Workspace memory as MCP tools, served at ``/mcp`` (Streamable HTTP, stateless)."""
