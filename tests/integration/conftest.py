"""The `network` fixture: the test run (tests/integration/netfixtures.py) under the test's tmp_path,
with the overrides given by `@pytest.mark.parametrize("network", [{...}], indirect=True)`; every
process it started is stopped when the test ends."""

import pytest

from tests.integration.netfixtures import open_network


@pytest.fixture
def network(tmp_path, request):
    with open_network(tmp_path, **getattr(request, "param", {})) as net:
        yield net
