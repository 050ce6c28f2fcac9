from __future__ import annotations

import pytest

from zeitwork.proxy.routing import prefix_matches


@pytest.mark.parametrize(
    ("path", "prefix", "matches"),
    [
        ("/", "/", True),
        ("/anything", "/", True),
        ("/api", "/api", True),
        ("/api/v1", "/api", True),
        ("/apis", "/api", False),
        ("/ap", "/api", False),
        ("/api/", "/api/", True),
        ("/api/x", "/api/", True),
        ("/api", "/api/", False),
        ("/static/app.js", "/static", True),
    ],
)
def test_prefixes_match_at_segment_boundaries(path: str, prefix: str, matches: bool) -> None:
    assert prefix_matches(path, prefix) is matches
