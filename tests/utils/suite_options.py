"""Command-line options of the model and data suites, and their checks and figures.

The suites test a *real* model and *real* photos, so they are excluded from the default
run (``addopts`` deselects the ``model`` and ``data`` markers) and need to be told what to
test::

    uv run pytest -m model --model-source=runs/skin5-current [--data-dir=data/raw]
    uv run pytest -m data --data-dir=data/raw [--dataset-config=configs/dataset_config.yaml]

Give the values with ``=``: pytest reads the command line to find its rootdir before
``tests/conftest.py`` declares these options, so ``--data-dir /elsewhere`` (a space) makes
``/elsewhere`` look like a test path, and pytest then looks for its configuration there.

:func:`add_suite_options` is called from ``tests/conftest.py``'s ``pytest_addoption``
(options must be declared by the root conftest or a plugin). The defaults of the
thresholds suit the small model ``.ci/run`` trains on generated photos
(``tests/utils/make_ci_model.py``); the benchmark-sized run on dermnet5 passes its own
(see ``tests/model/__init__.py``).

:func:`require_options` makes a selected suite without its option a usage error (one
line, exit code 4), not a skip: a green run must mean the suite ran.
:func:`record_figure` / :func:`write_figures` collect the measured figures (invariance,
macro-F1, ECE, ...) and print them in a section of the terminal summary.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

# The thresholds for the CI model (50 generated val photos, separable colours); dermnet5's
# are in tests/model/__init__.py.
DEFAULT_MIN_MACRO_F1 = 0.8
DEFAULT_MAX_ECE = 0.15
DEFAULT_MIN_INVARIANCE = 0.95
DEFAULT_MAX_PROB_DELTA = 1e-4
DEFAULT_PHASH_DISTANCE = 32  # of 256 bits; see utils.perceptual
DEFAULT_MAX_OOD_FLAGGED = 0.05
NON_SKIN_PROBES = ("flat colour", "noise", "text page", "checkerboard", "gradient")

_FIGURES: dict[str, pytest.StashKey[list[str]]] = {
    "model": pytest.StashKey[list[str]](),
    "data": pytest.StashKey[list[str]](),
}


def add_suite_options(parser: pytest.Parser) -> None:
    """Declare the options (group "model and data suites" in ``pytest --help``)."""
    group = parser.getgroup("model and data suites", "tests of the real model and data")
    group.addoption(
        "--model-source",
        default=None,
        help="model for -m model: an export folder (runs/skin5-current) or models:/<name>@<alias>",
    )
    group.addoption(
        "--data-dir",
        default=None,
        help="photo tree <dir>/<split>/<label>/* for -m data (required) and -m model "
        "(default: the dataset config's val split)",
    )
    group.addoption(
        "--dataset-config",
        default="configs/dataset_config.yaml",
        help="dataset config giving the splits and labels (default: %(default)s)",
    )
    group.addoption(
        "--min-macro-f1",
        type=float,
        default=DEFAULT_MIN_MACRO_F1,
        help="val macro-F1 floor (default %(default)s, the CI model; dermnet5: 0.75)",
    )
    group.addoption(
        "--max-ece",
        type=float,
        default=DEFAULT_MAX_ECE,
        help="val ECE bound with the model's temperature (default %(default)s)",
    )
    group.addoption(
        "--min-invariance",
        type=float,
        default=DEFAULT_MIN_INVARIANCE,
        help="share of val photos whose top-1 must survive each orientation change "
        "(default %(default)s)",
    )
    group.addoption(
        "--max-prob-delta",
        type=float,
        default=DEFAULT_MAX_PROB_DELTA,
        help="ONNX vs Keras bound on |probability difference| (default %(default)s)",
    )
    group.addoption(
        "--max-ood-flagged",
        type=float,
        default=DEFAULT_MAX_OOD_FLAGGED,
        help="share of val photos the out-of-distribution guard may flag (default %(default)s)",
    )
    group.addoption(
        "--ood-probes",
        default=",".join(NON_SKIN_PROBES),
        help="generated non-skin images the guard must flag, comma-separated (default "
        "%(default)s); a model trained on generated colour fields (the CI model) sees flat "
        "colour and noise as its own kind of photo",
    )
    group.addoption(
        "--phash-distance",
        type=int,
        default=DEFAULT_PHASH_DISTANCE,
        help="perceptual duplicates: 256-bit pHash Hamming distance at most this "
        "(default %(default)s)",
    )


def require_options(
    config: pytest.Config, items: Sequence[pytest.Item], marker: str, options: Sequence[str]
) -> None:
    """Refuse the run (one line) when a selected test has ``marker`` and an option is unset.

    Call it from a ``trylast`` ``pytest_collection_modifyitems`` so ``-m`` has already
    deselected what will not run.
    """
    if not any(item.get_closest_marker(marker) for item in items):
        return
    missing = [name for name in options if config.getoption(name) in (None, "")]
    if missing:
        raise pytest.UsageError(
            f"the {marker} suite (-m {marker}) needs {' and '.join(missing)}: "
            f"e.g. pytest -m {marker} "
            + " ".join(f"{name}=<{name.removeprefix('--').replace('-', '_')}>" for name in missing)
        )


def record_figure(config: pytest.Config, suite: str, line: str) -> None:
    """Keep ``line`` (a measured figure) for the summary of ``suite`` ("model" or "data")."""
    config.stash.setdefault(_FIGURES[suite], []).append(line)


def write_figures(terminalreporter: pytest.TerminalReporter, suite: str) -> None:
    """Print the figures of ``suite`` as a section of the terminal summary (if any)."""
    lines = terminalreporter.config.stash.get(_FIGURES[suite], [])
    if lines:
        terminalreporter.section(f"{suite} suite figures", sep="-")
        for line in lines:
            terminalreporter.write_line(line)
