"""Errors a user can fix: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input (config, data, checkpoint): the message says what is wrong and what to do."""
