"""Assertions shared by the CLI tests."""


def one_line_error(capsys, *needles: str) -> str:
    """The captured stderr is one ``anomem: error:`` line holding every needle."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomem: error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err
