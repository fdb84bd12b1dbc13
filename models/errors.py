"""The models package's errors: all derive from :class:`ModelsError`."""

from groundwatch.errors import GroundwatchError
from groundwatch.modelmeta import MetadataError


class ModelsError(GroundwatchError):
    """Root of everything the models package raises on purpose."""


class ModelFileError(ModelsError, MetadataError):
    """A model file is missing, not TorchScript, or lacks/garbles its groundwatch.json metadata.

    Also a :class:`groundwatch.modelmeta.MetadataError`, the core's error for the same problems.
    """
