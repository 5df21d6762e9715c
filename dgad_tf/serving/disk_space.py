"""Running out of disk during an export: the space an export needs and the error that says so.

`export_student` writes every artifact into a temporary folder; when a write fails for want of
space (an `OSError` with errno ENOSPC, or TensorFlow's own error from its file writers), the
folder is removed and `ExportDiskFull` names the disk, the space the export needs
(`estimated_export_bytes`) and the space that is free.
"""

import errno
import os
import pathlib
import re
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from dgad_tf.serving.formats import EXPORT_FORMATS


class ExportDiskFull(OSError):
    """The export ran out of disk space; its temporary folder was removed, nothing else changed.

    An `OSError` with errno `ENOSPC`, whose message names the disk, the space the export needs
    and what is free.
    """

    def __str__(self):
        return self.strerror  # one line without the "[Errno 28]" prefix


# Graphs and the model card take what the copies of the weights do not (measured on the small-cnn
# student: graph 153 kB).
_GRAPHS_AND_CARD_BYTES = 1 << 20


def estimated_export_bytes(model, formats) -> int:
    """About how many bytes `export_student` writes for `model` in `formats`.

    Each format's `weight_copies` float32 copies of the weights, plus 1 MiB for graphs and the
    model card.
    """
    weights = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    copies = sum(EXPORT_FORMATS.get(name).weight_copies for name in formats)
    return int(weights * copies) + _GRAPHS_AND_CARD_BYTES


def is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    # TensorFlow's file writers (SaveV2 for the SavedModel) raise their own error types.
    return isinstance(err, tf.errors.OpError) and "No space left on device" in str(err)


def _written_path(err: BaseException, default: pathlib.Path) -> pathlib.Path:
    """The file being written when `err` was raised, or `default` when it does not say."""
    named = getattr(err, "filename", None)
    if not named:
        # TensorFlow: "... /out/.tmp-1-x/variables/...; No space left on device [Op:SaveV2]"
        found = re.search(r"(/[^\s;]+);? No space left on device", str(err))
        named = found.group(1) if found else None
    return pathlib.Path(named) if named else default


def _mount_point(path: pathlib.Path) -> pathlib.Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def disk_full_error(err, out_dir: pathlib.Path, model, formats) -> ExportDiskFull:
    written = _written_path(err, out_dir)
    disk = _mount_point(written)
    free = shutil.disk_usage(disk).free
    megabytes = 1 << 20
    needed = estimated_export_bytes(model, formats)
    where = "export to another --out (out_dir) with room for it"
    if disk != _mount_point(out_dir):
        where = (
            "point TMPDIR at a disk with room for it (the TFLite converter writes a temporary "
            f"SavedModel in {tempfile.gettempdir()})"
        )
    return ExportDiskFull(
        errno.ENOSPC,
        f"no space left on the disk mounted at {disk} while writing {written}: exporting "
        f"{', '.join(formats)} needs about {needed / megabytes:.3g} MB there and "
        f"{free / megabytes:.3g} MB are free (the temporary folder is removed); free space "
        f"there or {where}. Nothing was changed in {out_dir}",
    )
