"""The project's error base: what a user can fix, as opposed to a bug.

Every error the project raises on purpose derives from `PlamoError`, and its message names the
file, key, row or option at fault. The command lines print a `PlamoError` (and an `OSError`:
a file the user named that cannot be read or written) as one line; any other exception is a bug
and keeps its traceback. Each class also keeps the builtin base it always had (`ValueError`,
`RuntimeError`, ...), so callers that caught those still do.
"""

from __future__ import annotations


class PlamoError(Exception):
    """An error the user can fix; the message says what and where."""


class InputError(PlamoError, ValueError):
    """A file, row, key or option the user gave is not what the project can use."""


USER_ERRORS = (PlamoError, OSError)  # what a command line prints as one line
