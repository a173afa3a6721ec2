"""The SDK's own floor: a bare MCPServer with one trivial tool, served over stdio."""

from mcp.server import MCPServer

mcp = MCPServer("bare")


@mcp.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


if __name__ == "__main__":
    mcp.run()
