"""llmbot: an LLM colleague in Mattermost threads. The thread is the state."""

from .plugins.api import Plugin, conversational_intent, listen_to
from .plugins.message import Message

__all__ = ["Message", "Plugin", "conversational_intent", "listen_to"]
__version__ = "0.1.0"
