"""The one exception the command line turns into a single clear line and a non-zero exit."""


class UserError(Exception):
    """Bad input or setup that the user can fix: the message says where and what."""


class Outage(Exception):
    """Most of a role's recent LLM calls failed after their retries (the provider is down, or refuses
    everything): the run stops with what it finished kept, instead of failing every item."""
