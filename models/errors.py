"""The models package's errors: all derive from :class:`ModelsError`."""

from groundwatch.errors import GroundwatchError


class ModelsError(GroundwatchError):
    """Root of everything the models package raises on purpose."""


class ModelFileError(ModelsError):
    """A model file is missing, not TorchScript, or lacks/garbles its groundwatch.json metadata."""
