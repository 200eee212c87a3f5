"""The one error type a user sees: a clear message and exit code 2, never a traceback."""


class DanluError(Exception):
    """A problem with the user's input or environment, explained in one line.

    The CLI prints `error: <message>` and exits with code 2. Library callers catch it like any
    other exception.
    """

    exit_code = 2


def did_you_mean(name: str, known: list[str]) -> str:
    """A suffix listing the known names, with the closest one first where there is one."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; known: {', '.join(sorted(known))}"
