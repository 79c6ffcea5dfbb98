"""The one exception type that the CLI prints as a single line, without a traceback."""


class UserError(Exception):
    """A mistake the user can fix: bad config, bad path, corrupt file.

    The message must name the problem and the fix in one line.
    """
