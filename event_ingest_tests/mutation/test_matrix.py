"""The matrix's own arguments: a run that would prove nothing is refused before anything starts."""

from __future__ import annotations

import pytest

from . import matrix


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "0"], "--seeds 0: at least 1 chaos run per mutant is needed, or the matrix proves nothing"),
        (["--seeds", "-2"], "--seeds -2: at least 1 chaos run per mutant is needed"),
        (["--mutants", "no_such_thing"], "--mutants: no such mutant no_such_thing; known: gate_spacing_halved"),
    ],
)
def test_a_matrix_that_would_prove_nothing_is_refused(argv, message, capsys, monkeypatch):
    def ran(*args, **kwargs):  # a tripwire: refused means nothing started
        raise AssertionError("the matrix started runs instead of refusing")

    monkeypatch.setattr(matrix, "chaos_run", ran)
    monkeypatch.setattr(matrix, "unit_run", ran)
    with pytest.raises(SystemExit) as exit_:
        matrix.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
