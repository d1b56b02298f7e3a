"""The one exception the command line turns into a single clear line and a non-zero exit."""


class UserError(Exception):
    """Bad input or setup that the user can fix: the message says where and what."""
