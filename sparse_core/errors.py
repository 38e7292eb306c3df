"""User-facing errors: the CLI turns these into one line on stderr and exit code 2 (never a traceback)."""


class UserError(Exception):
    """Bad input from the user (file, field, value). ``str(err)`` is the one line they see."""

    exit_code = 2


class NotSupportedYet(UserError):
    """A valid recipe asks for something this build cannot execute yet; never silently ignored."""
