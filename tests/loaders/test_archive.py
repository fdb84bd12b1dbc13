import io
import zipfile

import pytest
import torch

from loaders import LoaderError
from loaders.archive import read_metadata
from tests import toymodels


def test_metadata_round_trip() -> None:
    meta = read_metadata(toymodels.archive(toymodels.BrightestPixel(), toymodels.metadata()))
    assert meta.classes == ("ship", "platform")
    assert (meta.bands, meta.dtype, meta.tile_size, meta.max_detections) == (1, "uint16", 64, 4)


def _state_dict_file() -> bytes:
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2).state_dict(), buf)
    return buf.getvalue()


def _zip_with(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, "x")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("blob", "fragment"),
    [
        (b"definitely not a model", "not a zip file"),
        (_zip_with("readme.txt"), "not a TorchScript archive"),
        (_state_dict_file(), "not a TorchScript archive"),
        (toymodels.archive(toymodels.BrightestPixel(), None), "carries no groundwatch.json"),
        (toymodels.archive(toymodels.BrightestPixel(), {"classes": ["a"]}), "lacks contract"),
        (toymodels.archive(toymodels.BrightestPixel(), toymodels.metadata(contract=3)), "contract 3"),
        (
            toymodels.archive(toymodels.BrightestPixel(), toymodels.metadata(dtype="int64")),
            "dtype must be one of",
        ),
        (toymodels.archive(toymodels.BrightestPixel(), toymodels.metadata(classes=[])), "classes must be"),
    ],
)
def test_bad_files_are_refused_with_the_reason(blob: bytes, fragment: str) -> None:
    with pytest.raises(LoaderError, match=fragment):
        read_metadata(blob, "m.pt")
