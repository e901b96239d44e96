"""
How the ``txacme`` command fails: its exit statuses, the errors of a bad command
line or a failed step, and the one-line description of any error for the
operator.

May import the core modules and Twisted.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import error as net_error
from twisted.web.client import RequestTransmissionFailed, ResponseNeverReceived

from txacme import errors
from txacme.cli.ui import UI

__all__ = [
    "EXIT_ATTENTION",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TEMPORARY",
    "EXIT_USAGE",
    "CommandFailed",
    "UsageError",
    "combine",
    "describe",
    "exit_code",
    "is_temporary",
    "report_failure",
]

EXIT_OK = 0
"""Everything asked for was done."""
EXIT_FAILURE = 1
"""The operation failed: the CA refused, validation failed, a file could not be written."""
EXIT_USAGE = 2
"""Bad command line or input (an option, a name, a file); nothing was done."""
EXIT_ATTENTION = 3
"""``status --check``: a certificate is missing, damaged, expired, revoked, in its
emergency window, or its last renewal failed."""
EXIT_TEMPORARY = 4
"""The CA could not be reached, timed out, rate-limited us or failed internally."""
EXIT_INTERRUPTED = 130
"""Interrupted (Ctrl-C)."""


class UsageError(errors.ConfigurationError):
    """A bad command line: an option, a name or a file given by the user."""


class CommandFailed(errors.TxACMEError):
    """A failure whose message is complete as it is, with its exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


_NO_ANSWER = (ResponseNeverReceived, RequestTransmissionFailed)


def is_temporary(error: BaseException) -> bool:
    """Whether trying again later may succeed: the CA or the network is in trouble."""
    if isinstance(error, errors.IssuanceFailed):
        return False
    if isinstance(
        error,
        (
            errors.ACMETimeout,
            errors.CAUnreachable,
            errors.RateLimited,
            errors.ServerInternal,
            errors.BadNonce,
        ),
    ):
        return True
    if isinstance(error, errors.ACMEProblem):
        return error.status is not None and error.status >= 500
    return isinstance(
        error,
        (
            net_error.ConnectError,
            net_error.DNSLookupError,
            net_error.TimeoutError,
            net_error.ConnectionLost,
            *_NO_ANSWER,
        ),
    )


def describe(error: BaseException) -> str:
    """A one-line description of ``error`` for the operator."""
    problem: errors.ACMEProblem | None = None
    if isinstance(error, errors.ACMEProblem):
        problem = error
    elif isinstance(error, errors.IssuanceFailed) and error.problem is not None:
        return f"{error.problem.code}: {error.problem.detail or error}"
    if problem is not None:
        text = f"{problem.code}: {problem.detail or problem}"
        if problem.retry_after is not None:
            text += f" (retry after {problem.retry_after:.0f} s)"
        return text
    if isinstance(error, errors.TxACMEError):
        return str(error)
    if isinstance(error, _NO_ANSWER):
        reasons = "; ".join(str(f.value) for f in error.reasons if f.value is not None)
        return f"no answer from the CA ({reasons or type(error).__name__})"
    text = " ".join(str(error).split())  # one line, even for a multi-line driver message
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def exit_code(error: BaseException) -> int:
    """The exit status for a command that failed with ``error``."""
    if isinstance(error, errors.ConfigurationError):
        return EXIT_USAGE
    if isinstance(error, CommandFailed):
        return error.code
    return EXIT_TEMPORARY if is_temporary(error) else EXIT_FAILURE


def combine(codes: Sequence[int]) -> int:
    """The exit status of several names: a failure wins over a temporary one."""
    failures = [c for c in codes if c != EXIT_OK]
    if not failures:
        return EXIT_OK
    if EXIT_FAILURE in failures or EXIT_USAGE in failures:
        return EXIT_FAILURE
    return max(failures)


def report_failure(ui: UI, error: BaseException) -> int:
    """Tell the operator how the command failed; its exit status."""
    code = exit_code(error)
    if isinstance(error, errors.ConfigurationError):
        ui.error(f"txacme: error: {error}")
    elif isinstance(error, CommandFailed):
        ui.error(f"txacme: {error}")
    else:
        ui.error(f"txacme: failed: {describe(error)}")
    if code == EXIT_TEMPORARY:
        ui.error("txacme: this looks temporary: try again later")
    return code
