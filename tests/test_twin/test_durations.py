"""Keyed draws: the vectorised table gives exactly the one-by-one values (common random numbers)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from twin.durations import DrawTable, StochasticDurations, keyed_uniform, keyed_uniforms
from twin.lane import Lane


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**70),
    replicas=st.lists(st.integers(min_value=0, max_value=2**40), min_size=1, max_size=8),
    keys=st.lists(st.text(min_size=0, max_size=20), min_size=1, max_size=8),
)
def test_vectorised_uniforms_equal_the_keyed_ones_exactly(seed, replicas, keys):
    table = keyed_uniforms(seed, replicas, keys)
    assert table.shape == (len(keys), len(replicas))
    for i, key in enumerate(keys):
        for j, r in enumerate(replicas):
            assert table[i, j] == keyed_uniform(seed, r, key)


def test_a_draw_depends_only_on_seed_replica_and_key():
    keys = [f"travel/T{i}/0" for i in range(50)]
    full = DrawTable(7, range(16), keys)
    # a table built for other replicas and other activities gives the same draw for the same key
    partial = DrawTable(7, [3, 15, 9], list(reversed(keys[10:20])) + ["unload/X/1"])
    for r in (3, 9, 15):
        for key in keys[10:20]:
            assert partial.uniform(r, key) == full.uniform(r, key) == keyed_uniform(7, r, key)
    # keys or replicas not in the table fall back to the same keyed value
    assert full.uniform(99, "sort/Y/0") == keyed_uniform(7, 99, "sort/Y/0")
    assert partial.uniform(0, keys[0]) == keyed_uniform(7, 0, keys[0])


def test_stochastic_durations_with_or_without_a_table_draw_the_same():
    lane = Lane("A->B", "A", "B", 3600.0, 0.2)
    table = DrawTable(5, range(4), ["travel/T1/0", "unload/T1/0"])
    for r in range(4):
        plain = StochasticDurations(5, r)
        tabled = StochasticDurations(5, r, draws=table)
        assert tabled.travel("T1", 0, lane, 0.0, 1.0) == plain.travel("T1", 0, lane, 0.0, 1.0)
        assert tabled.travel("T2", 1, lane, 0.0, 0.5) == plain.travel("T2", 1, lane, 0.0, 0.5)
        # again, now from the table's per-leg noises (and a leg it does not hold, remembered as such)
        assert tabled.travel("T1", 0, lane, 0.0, 1.0) == plain.travel("T1", 0, lane, 0.0, 1.0)
        assert tabled.travel("T2", 1, lane, 0.0, 0.5) == plain.travel("T2", 1, lane, 0.0, 0.5)
        assert table.leg_noises("T1", 0, 0.2)[r] == plain._noise("travel/T1/0", 0.2)
    assert table.leg_noises("T2", 1, 0.2) == []
    # a replica the table does not hold draws one by one
    assert StochasticDurations(5, 9, draws=table).travel("T1", 0, lane, 0.0, 1.0) == StochasticDurations(5, 9).travel(
        "T1", 0, lane, 0.0, 1.0
    )
    # a table of another seed is not used
    assert StochasticDurations(6, 0, draws=table).draws is None


def test_handling_draws_from_the_table_by_key_equal_the_keyed_ones():
    """Unloading and sorting draws are read from the table's noises by key (without the
    draw's full key formatted): the same values as one by one, for keys in the table or
    not, again once remembered, for a replica the table does not hold and without noise."""
    import math

    from twin.durations import keyed_normal
    from twin.site import Site

    site = Site("S", "hub", "r1", 2, 1200.0, dock_seconds=600.0, seconds_per_order=3.0)
    table = DrawTable(5, range(4), ["unload/T1/0", "sort/T1/0", "sort/init/S/10.0"])
    for sigma in (0.1, 0.3):
        for r in (*range(4), 9):
            plain = StochasticDurations(5, r, handling_sigma=sigma)
            tabled = StochasticDurations(5, r, handling_sigma=sigma, draws=table)
            for _ in range(2):  # the second time from what the first remembered
                for key in ("T1/0", "T2/1", "init/S/10.0"):
                    assert tabled.unload(site, 40, key) == plain.unload(site, 40, key)
                    assert tabled.sort(site, 40, 1200.0, key) == plain.sort(site, 40, 1200.0, key)
            # the oracle: the keyed normal draw behind the lognormal noise
            noise = math.exp(sigma * keyed_normal(5, r, "sort/T1/0"))
            assert tabled.sort(site, 400, 1200.0, "T1/0") == max(1.0, round(1200.0 * noise))
    assert table.handling_noises("unload", 0.1)["T2/1"] == []  # not in the table: drawn one by one
    assert len(table.handling_noises("sort", 0.3)["T1/0"]) == 4
    assert StochasticDurations(5, 0, handling_sigma=0.0, draws=table).unload(site, 40, "T1/0") == 720.0


def test_the_rest_of_an_unloading_is_drawn_given_that_it_has_not_ended():
    """``unload_rest``: the unloading's lognormal conditioned on lasting longer than what is done.

    Worked: nominal 600 + 2 * 200 = 1000 s, sigma 0.1. With 900 s done, F(900) = Phi(ln 0.9 /
    0.1) = Phi(-1.0536) = 0.1460, so the conditional median is the quantile 0.1460 + 0.5 *
    0.8540 = 0.5730 of the lognormal: 1000 * exp(0.1 * 0.1840) = 1018.6 s, 118.6 s to go.
    """
    import statistics

    from twin.durations import NominalDurations, StochasticDurations
    from twin.site import Site

    site = Site("Z", "zone", "r", 3, 900.0)
    one = StochasticDurations(7, 3)
    assert one.unload_rest(site, 200, "T/0", 0.0) == one.unload(site, 200, "T/0")
    # keyed: the same draw every time (common random numbers)
    assert one.unload_rest(site, 200, "T/0", 900.0) == StochasticDurations(7, 3).unload_rest(site, 200, "T/0", 900.0)
    rests = [StochasticDurations(7, r).unload_rest(site, 200, "T/0", 900.0) for r in range(4000)]
    assert abs(statistics.median(rests) - 118.6) <= 3.0
    assert min(rests) >= 1.0
    # long past anything the lognormal allows: at most a few seconds, never negative
    assert StochasticDurations(7, 3).unload_rest(site, 200, "T/0", 5000.0) == 1.0
    assert NominalDurations().unload_rest(site, 200, "T/0", 900.0) == 100.0
    assert NominalDurations().unload_rest(site, 200, "T/0", 1900.0) == 1.0
