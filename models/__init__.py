"""groundwatch models: synthetic scenes, the CenterNet-style detector, training and evaluation.

Imports stay light here (no torch) so the CLI loads fast; import the submodules you need.
"""

from models.archive import METADATA_FILE, read_metadata
from models.errors import ModelFileError, ModelsError

__all__ = ["METADATA_FILE", "ModelFileError", "ModelsError", "read_metadata"]
