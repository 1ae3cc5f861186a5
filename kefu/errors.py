"""The one exception type a user sees: it says what was wrong, where, and what to do."""


class KefuError(Exception):
    """An error caused by the user's input or environment, worded for that user.

    The CLI prints its message as one paragraph and exits with status 1; the server turns it into
    a 4xx with a JSON body. Anything else that escapes is a bug in kefu.
    """
