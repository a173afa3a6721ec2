"""The agent's workspace and the processes it starts."""
