"""The one base of the project's errors: what `crackseg` reports as a one-line message.

Every error a user can cause (a bad file, option or value) derives from `CracksegError`, so the command line turns
exactly those into `error: ...` lines, and anything else, a bug, keeps its traceback. None derives from ValueError:
a batch loop that goes on after a failing input catches CracksegError (and the I/O errors it expects), so that a
real bug stops the run instead of being reported as one failed photo.
"""


class CracksegError(Exception):
    """A problem the user can fix; the message names the file or option and says what to do."""


class InputError(CracksegError):
    """A value, option or input given to crackseg cannot be used."""


class InputTypeError(InputError):
    """An input of a type crackseg does not accept (the message names the accepted ones)."""


class OutputExistsError(CracksegError):
    """A run would replace a file an earlier run left in its output folder, and was not told to (`overwrite`)."""


def read_json(path, label: str, error: type[CracksegError]):
    """The JSON in a file the user named, or an `error` naming it (`label`, e.g. "--classes x.json") and why."""
    import json
    from pathlib import Path

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{label}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{label}: not readable JSON ({err})") from None
