"""dgad_tf.study_figures: the study's figures, drawn from the synthetic study of test_study_report.

Kept apart from tests/test_study_report.py, whose tests check numbers and are re-run for every
mutant of the statistics by the mutation-testing run (docs/contributing.md): drawing takes seconds.
"""

import pytest
from test_study_report import load, synthetic_rows

from dgad_tf import study_report


def test_figures_are_vector_and_png_and_name_attack_eps_n_seeds_and_the_validation_metric(
    tmp_path, monkeypatch
):
    pytest.importorskip("matplotlib")
    from dgad_tf import study_figures

    study = load(tmp_path)
    rows = synthetic_rows()
    result = study_report.summarize(study, rows, None)
    texts, real_save = {}, study_figures._save

    def save(figure, path):
        texts[path.name] = " | ".join(
            [t.get_text() for t in figure.texts]
            + [
                t
                for axes in figure.axes
                for t in (axes.get_title(), axes.get_xlabel(), axes.get_ylabel())
            ]
        )
        return real_save(figure, path)

    monkeypatch.setattr(study_figures, "_save", save)
    written = study_report.write_figures(tmp_path, result, rows, "autoattack_accuracy")
    pngs = sorted(p.name for p in written if p.suffix == ".png")
    assert (
        pngs
        == sorted(texts)
        == sorted(
            [
                study_figures.PER_SEED_FIGURE,
                study_figures.SCATTER_FIGURE,
                study_figures.ATTACKS_FIGURE,
                study_figures.CURVE_FIGURE,
            ]
        )
    )
    for name in pngs:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / name).with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    for name in (study_figures.PER_SEED_FIGURE, study_figures.SCATTER_FIGURE):
        assert "ε = 8/255" in texts[name] and "n = 600 test images" in texts[name]
        assert "3 seeds" in texts[name] and "(%)" in texts[name]
    assert "AutoAttack" in texts[study_figures.SCATTER_FIGURE]
    assert "PGD-20 accuracy (%)" in texts[study_figures.ATTACKS_FIGURE]
    assert "AutoAttack accuracy (%)" in texts[study_figures.ATTACKS_FIGURE]
    curve = texts[study_figures.CURVE_FIGURE]
    # the distiller's test_step: train.val_robust_steps PGD steps on val_robust_n images
    assert "PGD-10 on 1,000 validation images" in curve and "step ε/4" in curve
    # a whole number of grey levels is written over 255, any other eps as a decimal
    assert study_figures.eps_text(0.1) == "0.1" and study_figures.eps_text(2 / 255) == "2/255"
