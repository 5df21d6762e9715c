"""`dgad_tf.workspace.Workspace`: the protocol run, search and study folders are written by.

The guard runs before the work and again under the lock; an earlier writer's identity file is
kept (a resumed folder keeps its record) unless the writer says it changed; a second writer is
refused while the first holds the folder. No TensorFlow.
"""

import pytest

from dgad_tf.workspace import FolderBusy, RunError, Workspace, is_locked


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
