"""The tools as plain typed functions; no MCP imports here."""
