"""The one exception the command line turns into a single clear line and a non-zero exit."""


class UserError(Exception):
    """Bad input or setup that the user can fix: the message says where and what."""


class Outage(Exception):
    """Most of a role's recent LLM calls failed after their retries (the provider is down, or refuses
    everything): the run stops with what it finished kept, instead of failing every item."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception in one line for a message: its text's first line (cut at ``limit``), or its type's
    name when it says nothing."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
