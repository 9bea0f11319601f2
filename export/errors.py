"""Export-stage errors: the message is the one-line error the user sees."""

from edged.errors import EdgedError


class ExportError(EdgedError):
    """An export step failed; the message names the problem and the fix."""


class ParityError(ExportError):
    """An exported model missed a parity gate against its PyTorch original."""
