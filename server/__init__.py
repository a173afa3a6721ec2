"""MCP wiring: the MCPServer app, its transports and the command line."""
