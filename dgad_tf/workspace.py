"""A folder one writer owns: its lock, its identity guard, resume, atomic file writes.

The three drivers, a run (`fit`), a search (`tune`) and a study (`compare`), write their folders
by one protocol, held here once (an export takes only the lock):

1. `Workspace.check()` before any work: the folder is new, or holds an earlier writer's identity
   file (`config.yaml`, `search_spec.yaml`, `study.yaml`) that this writer may resume; the
   writer's own `check` compares the two and refuses anything else, writing nothing.
2. `with workspace.writing():` takes the folder's lock and checks again (another writer may
   have come and gone in between), then the writer writes its identity file with
   `write_identity` and its results with `atomic_write`.

One process writes a folder at a time. A writer takes an exclusive advisory lock
(`fcntl.flock`) on `<folder>/.lock` and holds it until it finishes. A second writer is refused at
once with `FolderBusy`, naming the folder and the process that holds it. The operating system
releases the lock when the holder exits, however it exits (a `kill -9` included), so a lock can
never go stale; a finished writer removes the `.lock` file, a killed one leaves it behind,
unlocked and harmless.

Example:
    >>> workspace = Workspace("runs/quickstart", "config.yaml", check=my_guard)
    >>> workspace.check()
    >>> with workspace.writing():
    ...     workspace.write_identity(cfg.to_yaml())
    ...     ...  # write checkpoints, logs, the report
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import tempfile
from typing import Callable, Iterator, Optional

LOCK_FILE = ".lock"


class RunError(ValueError):
    """The run cannot start as configured (bad data, teacher, or run folder)."""


class FolderBusy(RuntimeError):
    """Another process is writing the folder."""


class FolderLock:
    """An exclusive lock on `folder` (created if missing) for the life of a `with` block.

    Args:
        folder: the folder to lock.
        what: how the folder is named to the user (e.g. "output.dir"), for the error message.
            Defaults to "folder".
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder"):
        self.folder = pathlib.Path(folder)
        self.what = what
        self._handle = None

    def acquire(self) -> "FolderLock":
        path = self.folder / LOCK_FILE
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
        except OSError as err:  # a read-only file system, no permission, a file in the path
            raise RunError(
                f"{self.what} {self.folder} cannot be written ({err.strerror or err}); "
                "choose a folder this process may create files in"
            ) from None
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise FolderBusy(
                    f"{self.what} {self.folder} is being written by {holder}; wait "
                    "for it to finish or choose another folder"
                ) from None
            # The holder before us may have removed the file between our open and our lock:
            # then we locked a file nobody else can see; take the one on disk instead.
            try:
                same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
            handle = open(path, "a+")
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


def atomic_write(path: str | os.PathLike, write_fn) -> None:
    """Call `write_fn(tmp_path)` and move the result to `path` atomically.

    The temporary file keeps `path`'s suffix (Keras checks `.keras`/`.h5` suffixes) and lives in
    the same folder, so the final `os.replace` never crosses file systems.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix="".join(path.suffixes) or ".tmp", dir=path.parent
    )
    os.close(fd)
    os.unlink(tmp)  # writers such as keras refuse nothing, but some want to create the file
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(text))


def holds_previous(folder: pathlib.Path, identity_file: str) -> bool:
    """Whether `folder` holds an earlier writer's `identity_file`; else it is new or empty.

    The writer then compares the identity file with its own settings (same config, same
    search) before resuming there.

    Raises:
        RunError: `folder` is a file, or holds other files but no `identity_file`.
    """
    if folder.exists() and not folder.is_dir():
        raise RunError(f"output.dir {folder} exists and is not a directory")
    if (folder / identity_file).exists():
        return True
    if folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir()):
        raise RunError(
            f"output.dir {folder} is not empty and holds no {identity_file}; choose "
            "an empty or new directory"
        )
    return False


def first_difference(old, new, prefix=""):
    """The dotted key of the first value that differs between two nested dicts, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            found = first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return prefix.rstrip(".") if old != new else None


class Workspace:
    """A folder one kind of writer owns, named by its identity file, guarded and locked.

    The folder is new (or empty), or holds an earlier writer's `identity_file`; `check`, the
    writer's own guard, then decides whether this writer resumes there (and may raise, naming
    the first setting that differs). Nothing is written until `writing()` holds the lock.

    Args:
        folder: the folder.
        identity_file: the file naming what the folder holds (e.g. "config.yaml").
        check: called with no argument before the work and again under the lock; raises
            `RunError` when this writer may not write the folder, and returns what the writer
            needs to know (e.g. whether a study grew). Defaults to None (`holds_previous` only).
        what: how the folder is named to the user in messages. Defaults to "output.dir".
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        identity_file: str,
        check: Optional[Callable[[], object]] = None,
        what: str = "output.dir",
    ):
        self.folder = pathlib.Path(folder)
        self.identity_file = identity_file
        self._check = check or (lambda: holds_previous(self.folder, identity_file))
        self.what = what

    @property
    def identity_path(self) -> pathlib.Path:
        return self.folder / self.identity_file

    def resumes(self) -> bool:
        """Whether an earlier writer left its identity file here (this writer then resumes)."""
        return self.identity_path.exists()

    def check(self):
        """The writer's guard, which writes nothing; returns what the guard returns."""
        return self._check()

    @contextlib.contextmanager
    def writing(self) -> Iterator[object]:
        """Hold the folder's lock, check again under it, and yield the guard's answer."""
        with FolderLock(self.folder, self.what):
            # Another writer may have started between the first check and the lock.
            yield self.check()

    def write_identity(self, text: str, *, replace: bool = False) -> None:
        """Write the identity file (atomically) unless it is there; `replace` rewrites it."""
        if replace or not self.resumes():
            atomic_write_text(self.identity_path, text)
