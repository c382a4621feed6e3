"""The test suite's own machinery: what keeps it fast must keep working."""

import pytest


@pytest.mark.xdist_group("suite_setup")
def test_xdist_groups_take_effect_under_loadgroup(request):
    """setup.cfg's --dist loadgroup sends the tests of one xdist_group to one worker, so that a
    shared end-to-end run (tests/support/mocked_run.py, the digits run of test_reliability) is
    trained once. pytest-xdist does it by suffixing the node id with the group; with pytest 9.2
    the suffix is silently lost and the tests spread over the workers (pytest-xdist #1386)."""
    if not request.config.getoption("loadgroup", default=False):
        pytest.skip("not an xdist worker under --dist loadgroup")
    assert request.node.nodeid.endswith("@suite_setup")
