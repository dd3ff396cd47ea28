"""One exception type for bad user input (config, files, meshes, token ids).

The CLI prints it as a single line and exits with code 2; library callers can catch it.
"""


class UserError(ValueError):
    """A problem with what the user asked for, stated in one line that names it."""
