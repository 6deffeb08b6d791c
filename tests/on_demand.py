"""The fixtures of the on-demand atlas tests (issue 24: an atlas that grows while it builds, and
its patches cut in the background): a tiny model, its photos, and the reference atlas built the
usual way. Module-scoped: each test module that imports them builds its own."""
from __future__ import annotations

import pytest

from convscope.atlas import build
from tests.test_atlas import SETTINGS, make_photos, tiny_model

#: An atlas with no projections up front and no unit names: what the gallery fills on demand.
ON_DEMAND = dict(SETTINGS, project=0, names=False)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def reference(model, photos, tmp_path_factory):
    """The same atlas built the usual way, every patch cut by the build."""
    out = tmp_path_factory.mktemp("ref") / "atlas"
    build(model, photos, out, **ON_DEMAND)
    return out
