"""`dgad_tf.workspace.Workspace`: the protocol run, search and study folders are written by.

The guard runs before the work and again under the lock; an earlier writer's identity file is
kept (a resumed folder keeps its record) unless the writer says it changed; a second writer is
refused while the first holds the folder. No TensorFlow.
"""

import fcntl
import os
import pathlib

import pytest

from dgad_tf.workspace import (
    LOCK_FILE,
    FolderBusy,
    FolderLock,
    RunError,
    Workspace,
    atomic_write,
    atomic_write_text,
    ensure_writable_folder,
    first_difference,
    holds_previous,
    is_locked,
)


def test_the_guard_runs_before_the_work_and_again_under_the_lock(tmp_path):
    folder = tmp_path / "run"
    seen = []

    def guard():
        seen.append(is_locked(folder))
        return len(seen)

    workspace = Workspace(folder, "config.yaml", check=guard)
    assert workspace.check() == 1
    with workspace.writing() as answer:
        assert answer == 2  # the guard's answer under the lock is the one the writer gets
    assert seen == [False, True]
    assert not is_locked(folder)


def test_a_guard_that_refuses_under_the_lock_writes_nothing(tmp_path):
    folder = tmp_path / "run"
    calls = []

    def guard():
        calls.append(1)
        if len(calls) > 1:  # another writer came and went between the check and the lock
            raise RunError("output.dir holds a run with a different config")

    workspace = Workspace(folder, "config.yaml", check=guard)
    workspace.check()
    with pytest.raises(RunError, match="different config"):
        with workspace.writing():
            workspace.write_identity("a: 1\n")
    assert not (folder / "config.yaml").exists()
    assert not is_locked(folder)


def test_an_earlier_identity_is_kept_unless_the_writer_replaces_it(tmp_path):
    folder = tmp_path / "study"
    workspace = Workspace(folder, "study.yaml")
    assert not workspace.resumes()
    with workspace.writing():
        workspace.write_identity("seeds: [0]\n")
    assert workspace.resumes()
    with workspace.writing():
        workspace.write_identity("seeds: [0]\n# a re-run's own command line\n")
    assert (folder / "study.yaml").read_text() == "seeds: [0]\n"
    with workspace.writing():
        workspace.write_identity("seeds: [0, 1]\n", replace=True)  # the study grew
    assert (folder / "study.yaml").read_text() == "seeds: [0, 1]\n"


def test_without_a_guard_a_folder_of_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="is not empty and holds no search_spec.yaml"):
        Workspace(tmp_path, "search_spec.yaml").check()


def test_a_second_writer_is_refused_while_the_first_writes(tmp_path):
    first = Workspace(tmp_path / "search", "search_spec.yaml", what="search folder")
    second = Workspace(tmp_path / "search", "search_spec.yaml", what="search folder")
    with first.writing():
        with pytest.raises(FolderBusy, match="search folder .* is being written by process"):
            with second.writing():
                pass


def test_a_lock_names_its_holder_and_is_gone_once_released(tmp_path):
    folder = tmp_path / "new" / "run"  # created, parents included
    stale = folder / LOCK_FILE
    with FolderLock(folder) as lock:
        assert lock.folder == folder
        # the holder's line replaces whatever a killed holder left in the file
        assert stale.read_text() == f"process {os.getpid()}\n"
        assert is_locked(folder)
        with pytest.raises(FolderBusy) as busy:
            FolderLock(folder).acquire()  # the default name of the folder: "folder"
        assert str(busy.value) == (
            f"folder {folder} is being written by process {os.getpid()}; wait for it to "
            "finish or choose another folder"
        )
    assert not stale.exists() and not is_locked(folder)
    lock.release()  # releasing twice does nothing
    FolderLock(tmp_path / "never").release()  # nor does releasing a lock never taken
    folder.joinpath(LOCK_FILE).write_text("process 1 that was killed, and more words\n")
    assert not is_locked(folder)  # a killed holder's file holds no lock
    with FolderLock(folder, "output.dir"):
        assert stale.read_text() == f"process {os.getpid()}\n"
        os.unlink(stale)  # removed by hand while held: releasing still unlocks
    assert not is_locked(folder)


def test_a_holder_that_wrote_no_name_is_another_process(tmp_path):
    (tmp_path / LOCK_FILE).touch()
    with open(tmp_path / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FolderBusy) as busy:
            with FolderLock(tmp_path, "export folder"):
                pass
    assert str(busy.value) == (
        f"export folder {tmp_path} is being written by another process; wait for it to "
        "finish or choose another folder"
    )


@pytest.mark.parametrize("replaced", [False, True])
def test_a_lock_file_removed_before_it_is_locked_is_locked_anew(tmp_path, monkeypatch, replaced):
    # The holder before us removes (or a new holder recreates) the file between our open and
    # our flock: we must end up holding the file on disk, not the one nobody sees any more.
    calls = []
    real_flock = fcntl.flock

    def flock_after_the_file_changed(handle, operation):
        calls.append(operation)
        if len(calls) == 1:
            os.unlink(tmp_path / LOCK_FILE)
            if replaced:
                (tmp_path / LOCK_FILE).write_text("")
        return real_flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_file_changed)
    with FolderLock(tmp_path):
        monkeypatch.setattr(fcntl, "flock", real_flock)
        assert (tmp_path / LOCK_FILE).read_text() == f"process {os.getpid()}\n"
        assert is_locked(tmp_path)
    assert not is_locked(tmp_path)


def test_a_folder_that_cannot_be_created_is_named_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    inside_a_file = tmp_path / "file" / "run"
    with pytest.raises(RunError) as error:
        FolderLock(inside_a_file, "output.dir").acquire()
    assert str(error.value) == (
        f"output.dir {inside_a_file} cannot be written (Not a directory); choose a folder "
        "this process may create files in"
    )
    with pytest.raises(ValueError) as error:
        ensure_writable_folder(inside_a_file, "--out")
    assert str(error.value) == f"--out {inside_a_file} is not writable: Not a directory"
    with pytest.raises(ValueError) as error:
        ensure_writable_folder(tmp_path / "file", "--out")
    assert str(error.value) == f"--out {tmp_path / 'file'} exists and is not a folder"
    made = ensure_writable_folder(str(tmp_path / "a" / "b"), "--out")
    assert made == tmp_path / "a" / "b" and made.is_dir()
    assert list(made.iterdir()) == []  # the test file is gone
    assert ensure_writable_folder(made, "--out") == made  # an existing folder is fine


def test_a_folder_no_file_can_be_written_in_is_named(tmp_path):
    # Permission bits do not stop root, so as root a read-only system folder stands in.
    if os.geteuid() == 0:
        folder = pathlib.Path("/sys")
        if not folder.is_dir() or os.access(folder, os.W_OK) and not _read_only(folder):
            pytest.skip("no folder root cannot write in")
    else:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
    with pytest.raises(ValueError) as error:
        ensure_writable_folder(folder, "--out")
    assert str(error.value).startswith(f"--out {folder} is not writable: ")


def _read_only(folder):
    try:
        with open(folder / ".dgad-write-test", "w"):
            pass
    except OSError:
        return True
    os.unlink(folder / ".dgad-write-test")
    return False


def test_is_locked_creates_nothing(tmp_path):
    assert not is_locked(tmp_path / "missing")
    assert not is_locked(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_write_shows_the_whole_file_or_none_of_it(tmp_path):
    target = tmp_path / "a" / "deep" / "model.weights.h5"  # its folders are made
    seen = []

    def write(tmp):
        tmp = pathlib.Path(tmp)
        seen.append(tmp)
        assert not tmp.exists()  # some writers want to create the file themselves
        assert tmp.parent == target.parent  # so os.replace never crosses file systems
        assert tmp.name.startswith(".model.weights.") and tmp.name.endswith(".weights.h5")
        tmp.write_text("new")

    atomic_write(target, write)
    assert target.read_text() == "new" and not seen[0].exists()

    def fail_halfway(tmp):
        pathlib.Path(tmp).write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fail_halfway)
    with pytest.raises(OSError):
        atomic_write(target, lambda tmp: open(pathlib.Path(tmp) / "no", "w"))
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    atomic_write(tmp_path / "plain", lambda tmp: seen.append(pathlib.Path(tmp).touch() or tmp))
    assert seen[-1].startswith(str(tmp_path / ".plain.")) and seen[-1].endswith(".tmp")
    atomic_write_text(tmp_path / "notes.txt", "é\n")
    assert (tmp_path / "notes.txt").read_text() == "é\n"


def test_a_folder_holds_an_earlier_writer_or_nothing(tmp_path):
    assert holds_previous(tmp_path / "new", "config.yaml") is False
    (tmp_path / LOCK_FILE).touch()
    assert holds_previous(tmp_path, "config.yaml") is False  # a killed holder's lock file only
    (tmp_path / "config.yaml").touch()
    assert holds_previous(tmp_path, "config.yaml") is True
    (tmp_path / "log.csv").touch()
    assert holds_previous(tmp_path, "config.yaml") is True
    with pytest.raises(RunError) as error:
        holds_previous(tmp_path, "study.yaml")
    assert str(error.value) == (
        f"output.dir {tmp_path} is not empty and holds no study.yaml; choose an empty or new "
        "directory"
    )
    with pytest.raises(RunError) as error:
        Workspace(tmp_path / "log.csv", "config.yaml").check()
    assert str(error.value) == f"output.dir {tmp_path / 'log.csv'} exists and is not a directory"


def test_first_difference_names_the_first_differing_dotted_key():
    old = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert first_difference(old, {"a": {"b": 1, "c": {"d": 2}}, "e": 3}) is None
    assert first_difference(old, {"a": {"b": 1, "c": {"d": 5}}, "e": 4}) == "a.c.d"
    assert first_difference(old, {"a": {"b": 1, "c": {"d": 2}}, "e": 3, "f": 0}) == "f"
    assert first_difference(old, {"a": {"b": 1, "c": {"d": 2}}}) == "e"
    assert first_difference(old, {"a": {"b": 1, "c": 7}, "e": 3}) == "a.c"
    assert first_difference(old, {"a": {"b": 1}, "e": 3}) == "a.c"
    assert first_difference({"x": None}, {}) is None  # a key left out reads as None
    assert first_difference({"a": {"maX": 1}}, {"a": {"maX": 2}}) == "a.maX"  # the key whole


def test_a_workspace_is_named_by_its_identity_file(tmp_path):
    workspace = Workspace(str(tmp_path / "run"), "config.yaml")
    assert workspace.identity_path == tmp_path / "run" / "config.yaml"
    assert workspace.check() is False  # the default guard: a new folder
    with workspace.writing() as answer:
        assert answer is False
        workspace.write_identity("a: 1\n")
        with pytest.raises(FolderBusy, match=f"^output.dir {tmp_path / 'run'} is being"):
            with Workspace(tmp_path / "run", "config.yaml").writing():
                pass
    assert workspace.check() is True and workspace.resumes()
    assert (tmp_path / "run" / "config.yaml").read_text() == "a: 1\n"
