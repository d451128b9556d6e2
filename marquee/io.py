"""Files on any filesystem TensorFlow supports: local paths and URIs (``gs://``, ``s3://`` with
tensorflow-io, ``ram://``, ``file://``).

TFX gives every step its artifact URIs under the pipeline root, which is ``gs://...`` on a
cluster; the custom components read and write them through ``tf.io.gfile`` with these helpers.
Libraries that only take a local path (ScaNN's serializer, the rejects CSV writer) write into a
local temporary directory that ``copy_tree`` then copies to the URI.

``ram://`` is TensorFlow's in-memory filesystem: the tests use it as a stand-in for ``gs://``.
"""

from __future__ import annotations

import io
import os
import shutil

import tensorflow as tf


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URI with a scheme (``gs://bucket/x``), False for a local path."""
    return "://" in os.fspath(path)


def runtime_or_str(value):
    """A component's path parameter: a TFX ``RuntimeParameter`` as it is (the Kubeflow spec
    then takes it at submission), anything else (a str, a Path) as a string."""
    from tfx.orchestration import data_types

    return value if isinstance(value, data_types.RuntimeParameter) else os.fspath(value)


def read_text(path: str | os.PathLike) -> str:
    with tf.io.gfile.GFile(os.fspath(path), "r") as fh:
        return fh.read()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path``, creating its directory, and replaces an existing file in one
    step (a temporary sibling renamed over it), so a reader never sees half a file."""
    path = os.fspath(path)
    parent, name = os.path.split(path)
    tmp = os.path.join(parent, f".{name}.tmp")
    tf.io.gfile.makedirs(parent or ".")
    if tf.io.gfile.exists(tmp):  # left by a writer that died
        tf.io.gfile.remove(tmp)
    with tf.io.gfile.GFile(tmp, "w") as fh:
        fh.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def list_dir(path: str | os.PathLike) -> list[str]:
    """Names in the directory ``path`` (``[]`` if there is none), sorted, once each, without
    the trailing ``/`` that object stores put on sub-directories."""
    path = os.fspath(path)
    if not tf.io.gfile.isdir(path):
        return []
    return sorted({name.rstrip("/") for name in tf.io.gfile.listdir(path)})


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike, last: str | None = None) -> None:
    """Copies the directory tree ``src`` into ``dst`` (either local or a URI) with tf.io.gfile.

    ``last``: the name of a file at the top of ``src`` copied after everything else, so that a
    reader waiting for it (``index.json``, ``saved_model.pb``) never finds a partial copy.
    """
    src, dst = os.fspath(src).rstrip("/"), os.fspath(dst).rstrip("/")
    if not tf.io.gfile.isdir(src):
        raise FileNotFoundError(f"{src}: no such directory to copy")
    deferred = None
    for dirpath, _, files in tf.io.gfile.walk(src):
        rel = dirpath.rstrip("/")[len(src):].strip("/")
        target = os.path.join(dst, rel) if rel else dst
        tf.io.gfile.makedirs(target)
        for name in files:
            pair = (os.path.join(dirpath, name), os.path.join(target, name))
            if not tf.io.gfile.exists(pair[0]):
                # ram:// lists a phantom child of ``assets/`` when ``assets.extra/`` exists
                continue
            if not rel and name == last:
                deferred = pair
            else:
                tf.io.gfile.copy(*pair, overwrite=True)
    if deferred is not None:
        tf.io.gfile.copy(*deferred, overwrite=True)


def publish_tree(src: str | os.PathLike, dest: str | os.PathLike, last: str) -> None:
    """Copies the directory ``src`` to ``dest`` so that a reader polling ``dest``'s parent never
    loads half of it.

    Locally: copied under a hidden sibling name, then renamed into place (atomic). On an object
    store, where renaming a directory is a copy of each object, the files are copied straight
    into place with ``last`` (the file a reader opens first) copied after all the others.
    """
    dest = os.fspath(dest)
    if is_remote(dest):
        copy_tree(src, dest, last=last)
        return
    parent, name = os.path.split(dest.rstrip("/"))
    tmp = os.path.join(parent, f".{name}.tmp")
    if os.path.exists(tmp):  # left by a push that died half-way
        shutil.rmtree(tmp)
    copy_tree(src, tmp, last=last)
    os.rename(tmp, dest)


class _GFileReader(io.RawIOBase):
    """A tf.io.gfile file as the seekable binary file pyarrow reads (GFile has no ``closed``)."""

    def __init__(self, path: str):
        super().__init__()
        self._fh = tf.io.gfile.GFile(path, "rb")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._fh.read(size)

    def readinto(self, buffer) -> int:
        data = self._fh.read(len(buffer))
        memoryview(buffer)[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._fh.seek(offset, whence)
        return self._fh.tell()

    def tell(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


def open_binary(path: str | os.PathLike) -> io.RawIOBase:
    """Opens ``path`` (local or a URI) for random-access binary reading, e.g. by
    ``pyarrow.parquet.ParquetFile``. Raises ``tf.errors.NotFoundError`` if it does not exist."""
    path = os.fspath(path)
    if not tf.io.gfile.exists(path):
        raise tf.errors.NotFoundError(None, None, f"{path}: no such file")
    return _GFileReader(path)
