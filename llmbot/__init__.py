"""llmbot: an LLM colleague in Mattermost threads. The thread is the state."""

__version__ = "0.1.0"
