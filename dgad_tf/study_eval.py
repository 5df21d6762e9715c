"""A study's protocol evaluation and the files that record it, per image.

Every evaluation file names the sha256 of the images it scored (`images_sha256`) and of the
model file (`model_sha256`). A correctness file holds, per protocol attack ("clean" included),
`np.packbits` of a bool [n] array: whether test image i (the first n test images, in the data's
order, which `images_sha256` pins) is still classified correctly; `dgad_tf.stats.unpack_correct`
reads it back.

Example:
    >>> evaluation = evaluate_protocol(model, study, splits)
    >>> write_evaluation(eval_file, correct_file, evaluation, model_file)
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import TYPE_CHECKING

import numpy as np

from dgad_tf import rundir, stats

if TYPE_CHECKING:
    from dgad_tf.study_spec import Study


def images_digest(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 of the evaluated images and labels: equal digests = the same test images."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).astype(np.int64).tobytes())
    return digest.hexdigest()


file_digest = rundir.sha256_file
"""sha256 of a file's bytes: ties an evaluation to the exact model file it scored."""


def evaluate_protocol(model, study: Study, splits) -> dict:
    """`model` under the study's protocol on the first `n` test images.

    The report holds, under "per_image", a bool [n] array per attack (see `write_evaluation`).
    """
    from dgad_tf.robustness import evaluate_robustness

    p = study.protocol
    x, y = splits.test.x[: p.n], splits.test.y[: p.n]
    report = evaluate_robustness(
        model,
        x,
        y,
        attacks=p.attacks,
        eps=p.eps,
        batch_size=p.batch_size,
        seed=p.seed,
        per_image=True,
    )
    report["images_sha256"] = images_digest(x, y)
    return report


def write_evaluation(
    eval_file: pathlib.Path, correct_file: pathlib.Path, evaluation: dict, model_file
) -> dict:
    """Write the per-image correctness, then the evaluation (the file that marks it done).

    Returns:
        The evaluation as written: "per_image" replaced by the correctness file's name, and
        the model file's sha256 added.
    """
    per_image = evaluation.pop("per_image")
    arrays = {name: stats.pack_correct(mask) for name, mask in per_image.items()}
    arrays["n"] = np.array(evaluation["n"])
    arrays["images_sha256"] = np.array(evaluation["images_sha256"])

    def save(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    rundir.atomic_write(correct_file, save)
    evaluation["per_image_file"] = correct_file.name
    evaluation["model_sha256"] = file_digest(model_file)
    rundir.atomic_write_text(eval_file, json.dumps(evaluation, indent=2, default=float))
    return evaluation


def read_correct(correct_file: pathlib.Path):
    """{attack: bool [n]} from a correctness file, or None when there is none (older studies)."""
    if not correct_file.exists():
        return None
    with np.load(correct_file) as data:
        n = int(data["n"])
        return {
            name: stats.unpack_correct(data[name], n)
            for name in data.files
            if name not in ("n", "images_sha256")
        }
