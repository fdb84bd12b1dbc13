"""Loaders: register TorchScript models in the engine as versioned, switchable registry entries.

A version is stored with AI.MODELSTORE into every feed it serves (one copy per feed hash tag,
so each copy sits in the slot of the tensors it runs on), warmed up in the engine, recorded in
the registry and only then made active. See docs/models.md for the model contract.
"""

from groundwatch.errors import GroundwatchError


class LoaderError(GroundwatchError):
    """A model could not be registered, activated or removed; the message says why and what to do."""
