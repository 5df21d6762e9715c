"""Folders that one process writes at a time: run folders, search folders, export base paths.

A writer takes an exclusive advisory lock (`fcntl.flock`) on `<folder>/.lock` and holds it until
it finishes. A second writer is refused at once with `FolderBusy`, naming the folder and the
process that holds it. The operating system releases the lock when the holder exits, however it
exits (a `kill -9` included), so a lock can never go stale; a finished writer removes the
`.lock` file, a killed one leaves it behind, unlocked and harmless.

Example:
    >>> with FolderLock("runs/quickstart", "output.dir"):
    ...     ...  # write checkpoints, logs, the report
"""

from __future__ import annotations

import fcntl
import os
import pathlib

LOCK_FILE = ".lock"


class FolderBusy(RuntimeError):
    """Another process is writing the folder."""


class FolderLock:
    """An exclusive lock on `folder` (created if missing) for the life of a `with` block.

    Args:
        folder: the folder to lock.
        what: how the folder is named to the user (e.g. "output.dir"), for the error message.
            Default "folder".
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder"):
        self.folder = pathlib.Path(folder)
        self.what = what
        self._handle = None

    def acquire(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        while True:
            handle = open(path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise FolderBusy(f"{self.what} {self.folder} is being written by {holder}; wait "
                                 "for it to finish or choose another folder") from None
            # The holder before us may have removed the file between our open and our lock:
            # then we locked a file nobody else can see; take the one on disk instead.
            try:
                same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        """Remove the lock file, then unlock (a killed holder leaves the file, never the lock)."""
        if self._handle is not None:
            try:
                os.unlink(self.folder / LOCK_FILE)
            except FileNotFoundError:
                pass
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(folder: str | os.PathLike) -> bool:
    """Whether some process holds `folder`'s lock now (False when it has no lock file)."""
    path = pathlib.Path(folder) / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def ensure_writable_folder(folder: str | os.PathLike, what: str) -> pathlib.Path:
    """Create `folder` if needed and prove a file can be written in it, before any real work.

    Permission bits alone do not tell (root ignores them; a read-only file system does not),
    so a temporary file is created and removed.

    Raises:
        ValueError: naming `what`, the folder and the reason.
    """
    import tempfile

    folder = pathlib.Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"{what} {folder} is not writable: {err.strerror or err}") from None
    return folder


def check_keras_file(path: str | os.PathLike, what: str) -> pathlib.Path:
    """`path` is a whole `.keras` archive, else a ValueError saying what it is instead.

    Keras reports a folder, a text file or a truncated archive alike as "File not found"; this
    names the actual problem before loading.
    """
    import zipfile

    path = pathlib.Path(path)
    if not path.exists():
        raise ValueError(f"{what}: no model at {path}")
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a folder, not a .keras model file")
    if path.suffix != ".keras":
        raise ValueError(f"{what}: {path} is not a .keras model file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{what}: {path} is not a .keras archive (truncated, or another kind "
                         "of file)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{what}: {path} is a damaged .keras archive: {err}") from None
    if broken is not None or "config.json" not in names:
        raise ValueError(f"{what}: {path} is a damaged .keras archive "
                         f"({'corrupt member ' + broken if broken else 'no config.json'})")
    return path


def run_config(model_path: str | os.PathLike):
    """The `Config` of the run folder holding `model_path` (a run folder or a file in one).

    Returns None when there is no `config.yaml` beside it.

    Raises:
        ConfigError: the run's `config.yaml` is unreadable.
    """
    from dgad_tf.config import load_config

    path = pathlib.Path(model_path)
    folder = path if path.is_dir() else path.parent
    config_path = folder / "config.yaml"
    return load_config(config_path) if config_path.is_file() else None
