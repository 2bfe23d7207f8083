"""The user-error family: what the CLI reports as one `error: <message>` line and exit status 2.

A `UserError` is a problem with what the user gave (a flag, a list file, a checkpoint, a run folder),
whose message says what is wrong and where (`file:line` when there is one) and what to do. Anything
else that escapes a mode is a bug or an environment failure, and keeps its traceback.

The existing specific errors (`ListFileError`, `ConversionError`, `ShardFormatError`, `BadSampleError`,
...) derive from it and from the built-in type they always were (`ValueError`, ...), so callers that
catch those still do. This module imports nothing.
"""


class UserError(Exception):
    """A problem with the user's input; the message is the whole report."""


class UsageError(UserError, ValueError):
    """A flag value or combination that cannot work (`--batch_size` not divisible by the replicas, ...)."""


class RunLockedError(UserError, RuntimeError):
    """Another trainer holds the run folder's lock."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named (or a mode needs first) is not there."""


class ExistingOutputError(UserError, FileExistsError):
    """An output that is never overwritten (an export version, a dataset folder) already exists."""


class DamagedFileError(UserError, ValueError):
    """A file the project reads back (a run's config.json, a checkpoint's state, an export's metadata, a hand-edited
    JSON) that does not parse; the message names it, the line and column, and what to do."""
