"""End-to-end test harness: the real sources, store and alerting pipeline driven on a simulated
clock against the simulators (``farmwatch.sim``). Used by the tests, the benchmarks and the demo;
nothing in the product imports it.

    from farmwatch.testing.scenario import ALERTS, Scenario
    with Scenario(nodes=3) as s:
        s.run(60); s.unit.kill_workers("hltwk01", 2); s.run(120)
        assert "HltWorkersDied" in s.fired_rules()
"""

__all__: list[str] = []
