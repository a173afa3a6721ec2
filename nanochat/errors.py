"""The one exception type whose message is meant for the agent."""


class UserError(Exception):
    """A refusal the caller can act on: the message says what was wrong and what to do next.

    The server turns it into an MCP tool error (isError) instead of a crash.
    """
