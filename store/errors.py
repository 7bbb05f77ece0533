"""mtp's exceptions: one root, one subclass per layer (as procrastinate has one root).

`except MtpError` catches everything mtp raises on purpose; each layer's class says whose problem
it is. Store-side classes live here; the engine's subclass `engine.errors.EngineError`, the app's
form errors subclass `InputError`. Classes that replaced a builtin base keep it as a second base,
so an `except ValueError` written before the root existed still catches them.
"""

from __future__ import annotations


class MtpError(Exception):
    """Root of every exception mtp raises on purpose; the message is fit to show as is."""


class StoreError(MtpError, RuntimeError):
    """The data folder or its database cannot be used; the message says why and what to do."""


class SettingsError(StoreError):
    """An `MTP_*` environment variable has a value mtp cannot use."""


class InputError(MtpError, ValueError):
    """Bad user input, with a message fit to show as is."""
