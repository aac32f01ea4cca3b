"""The official CIFAR-10 python format, decoded without ever running code from the file.

The batches are Python pickles, and a pickle can name any callable to run on load: an archive whose
``data_batch_1`` was made by an attacker would run their code under a plain ``pickle.loads``. Here a
restricted unpickler admits only the globals a numpy array's pickle names (the approach of the Python
documentation's "Restricting Globals" and of ``torch.load(weights_only=True)``), and every decoded value is
then checked against the layout the format has (uint8 rows of 3072 pixels, integer labels in range, byte-string
class names). On top, each file's md5 is compared with the published one, as torchvision does, so a damaged
or altered official file is refused before it is decoded.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError

IMAGE_SIZE = 32  # pixels, height and width
BATCH_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
MAX_BATCH_BYTES = 64 << 20  # an official batch is 31 MB; train.data refuses larger files unread
# Published md5 of each file of cifar-10-python.tar.gz (the same list torchvision's CIFAR10 checks).
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only callables a batch pickle may name: those that rebuild a numpy array (Python 2 and 3 forms)."""
    import codecs

    # numpy's own pickling names them, in whatever private module this numpy keeps them (numpy.core before 2.0,
    # numpy._core since): ask an array instead of importing a private path
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # protocol 2 writes bytes as _codecs.encode(str, 'latin1')
    }


class _BatchUnpickler(pickle.Unpickler):
    """A pickle reader that refuses every global outside ``_allowed_globals``: nothing in the file can run."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return found


def safe_unpickle(data: bytes) -> Any:
    """Decode a CIFAR batch pickle with the restricted unpickler (raises pickle.UnpicklingError and others)."""
    return _BatchUnpickler(data).load()


def check_md5(files: dict[str, bytes], where: str) -> None:
    """Refuse batch files whose md5 differs from the published one (damaged, altered or not official)."""
    for name in BATCH_FILES:
        got = hashlib.md5(files[name]).hexdigest()
        if got != OFFICIAL_MD5[name]:
            raise DawnpipeError(
                f"{where}: {name} has md5 {got}, not the official CIFAR-10 file's {OFFICIAL_MD5[name]}; "
                "it is damaged or altered",
                "download cifar-10-python.tar.gz again, or pass --unofficial-batches for a batch set you made "
                "yourself (it is still decoded without running code)",
            )


def decode_batches(files: dict[str, bytes], where: str, *, verify_md5: bool = True) -> tuple:
    """Official batches -> (train_x, train_y, test_x, test_y, classes); images uint8 NHWC RGB."""
    missing = [n for n in BATCH_FILES if n not in files]
    if missing:
        raise DawnpipeError(f"{where} lacks CIFAR-10 batch files {missing}", "download or extract it again")
    if verify_md5:
        check_md5(files, where)
    meta = _load(files, "batches.meta", where)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, bytes) for n in names):
        _bad(where, "batches.meta", "its label_names are not a list of at least 2 byte strings")
    classes = [n.decode("utf-8", "replace") for n in names]
    train = [_batch(files, n, where, len(classes)) for n in BATCH_FILES[:5]]
    test_x, test_y = _batch(files, "test_batch", where, len(classes))
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return train_x, train_y, test_x, test_y, classes


def _load(files: dict[str, bytes], name: str, where: str) -> Any:
    # sizes were checked against MAX_BATCH_BYTES by train.data before a byte was read
    try:
        return safe_unpickle(files[name])
    except pickle.UnpicklingError as err:
        _bad(where, name, f"it is not a plain data pickle ({err})")
    except Exception as err:  # a damaged pickle can raise almost anything; none of it runs foreign code
        _bad(where, name, f"it is corrupt ({type(err).__name__})")


def _batch(files: dict[str, bytes], name: str, where: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _load(files, name, where)
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    pixels = 3 * IMAGE_SIZE * IMAGE_SIZE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        _bad(where, name, f"its data is not a uint8 array of {pixels}-pixel rows")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(type(v) is int for v in labels):
        _bad(where, name, "its labels are not a list of integers, one per image")
    y = np.asarray(labels, dtype=np.int64)
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        _bad(where, name, f"a label lies outside the {num_classes} classes of batches.meta")
    x = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y


def _bad(where: str, name: str, why: str) -> None:
    raise DawnpipeError(f"{where}: batch file {name} was refused: {why}", "download or extract the data again")
