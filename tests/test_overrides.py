"""moefuse.override: validation, nesting, and what a new family does to the busiest-expert guard (no GPU)."""

import pytest

import moefuse
from moefuse import overrides


def test_overrides_nest_and_restore():
    assert overrides.current() == overrides.Overrides()
    with moefuse.override(backend="sm80", tile_m=64, sources={"permute": "a.cu"}) as outer:
        assert outer.backend == "sm80" and outer.tile_m == 64
        with moefuse.override(
            tile_m=128, family="wide", busiest_limit=300, sources={"routing": "b.cu"}
        ) as inner:
            assert (inner.backend, inner.tile_m, inner.family, inner.busiest_limit) == (
                "sm80",
                128,
                "wide",
                300,
            )
            assert inner.source("permute") == "a.cu" and inner.source("routing") == "b.cu"
            with moefuse.override(family="swapped") as innermost:
                assert innermost.busiest_limit is None  # a new family runs unguarded
            assert overrides.current() is inner
        assert overrides.current() is outer and outer.source("routing") is None
    assert overrides.current() == overrides.Overrides()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backend": "sm100"}, "backend must be one of"),
        ({"family": "narrow"}, "family must be one of"),
        ({"busiest_limit": 10}, "pass it with family='wide'"),
        ({"family": "wide", "busiest_limit": 0}, "positive number of rows"),
        ({"family": "wide", "busiest_limit": -5}, "positive number of rows"),
    ],
)
def test_bad_overrides_are_refused_before_anything_runs(kwargs, message):
    with pytest.raises(ValueError, match=message), moefuse.override(**kwargs):
        pass
    assert overrides.current() == overrides.Overrides()
