"""`python -m autoresearch_mcp.server ...` is the `autoresearch-mcp` command."""

from autoresearch_mcp.server.cli import main

raise SystemExit(main())
