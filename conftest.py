import pytest

# A docstring example is what a user copies first: a fit there that stops
# before it converges would show them a ConvergenceWarning, so the doctests
# fail on one.
CONVERGED = pytest.mark.filterwarnings("error::sklearn.exceptions.ConvergenceWarning")


def pytest_collection_modifyitems(items):
    for item in items:
        if isinstance(item, pytest.DoctestItem):
            item.add_marker(CONVERGED)
