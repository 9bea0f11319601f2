"""Exceptions whose message is the one-line error shown to the user."""


class EdgedError(Exception):
    """Base class: the message names the problem and the fix, on one line."""


class BundleError(EdgedError):
    """A model bundle is missing, corrupt, truncated or from another version."""


class AudioError(EdgedError):
    """Audio cannot be read or has an unusable format."""


class ConfigError(EdgedError):
    """A configuration value is unknown, of the wrong type or out of range."""
