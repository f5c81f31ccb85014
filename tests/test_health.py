"""Loop health figures (`oxloop.health`): known loads give known figures.

Health figures are an oxloop feature: asyncio's own loop has none, and the
reference run checks that asking one for them is refused."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time

import oxloop
import pytest
from oxloop import _health


@pytest.fixture
def hloop(loop, is_oxloop):
    """The flavour's loop with health figures on (oxloop flavours only)."""
    if not is_oxloop:
        with pytest.raises(TypeError, match="not an oxloop event loop"):
            oxloop.health(loop)
        pytest.skip("asyncio's loop has no health figures")
    oxloop.configure_health(loop, enabled=True)
    return loop


def blocker():
    time.sleep(0.05)


BLOCKER_LINE = blocker.__code__.co_firstlineno


def test_figures_are_off_by_default(loop, is_oxloop):
    if not is_oxloop:
        pytest.skip("oxloop only")
    loop.call_soon(loop.stop)
    loop.run_forever()
    h = oxloop.health(loop)
    assert not h.enabled
    assert (h.callbacks, h.iterations, h.utilization) == (0, 0, 0.0)


def test_a_loop_that_never_ran(hloop):
    h = oxloop.health(hloop)
    assert h.enabled
    assert (h.callbacks, h.iterations, h.running, h.utilization) == (0, 0, 0.0, 0.0)
    assert h.lag.count == 0 and h.lag.percentile(99) == 0.0 and h.lag.max == 0.0
    assert h.slow_callbacks == []


def test_a_blocking_callback_is_the_slowest_with_its_name_and_line(hloop):
    hloop.call_soon(blocker)
    hloop.call_soon(hloop.stop)
    hloop.run_forever()
    slowest = oxloop.health(hloop).slow_callbacks[0]
    assert slowest.name == "blocker"
    assert slowest.location == f"{__file__}:{BLOCKER_LINE}"
    assert 0.05 <= slowest.duration < 0.5
    assert abs(slowest.timestamp - time.time()) < 60


def test_a_task_step_is_named_by_its_coroutine_and_suspension_line(hloop):
    async def stuck():
        time.sleep(0.05)
        await asyncio.sleep(0)  # the step ends here
        return 1

    line = stuck.__code__.co_firstlineno + 2
    assert hloop.run_until_complete(stuck()) == 1
    slowest = oxloop.health(hloop).slow_callbacks[0]
    assert slowest.name.endswith("stuck")
    assert slowest.location == f"{__file__}:{line}"


def test_a_timer_behind_a_blocker_shows_its_lag(hloop):
    async def main():
        sleeper = asyncio.ensure_future(asyncio.sleep(0.01))
        await asyncio.sleep(0)  # the sleep's timer is scheduled
        time.sleep(0.03)
        await sleeper

    hloop.run_until_complete(main())
    lag = oxloop.health(hloop).lag
    assert lag.percentile(99) >= 0.02
    assert lag.max >= 0.02
    assert lag.percentile(0) <= lag.percentile(50) <= lag.percentile(99) <= lag.max


def test_an_idle_loop_is_near_zero_and_a_busy_one_near_one(hloop):
    hloop.run_until_complete(asyncio.sleep(0.2))
    idle = oxloop.health(hloop, reset=True)
    assert idle.utilization < 0.2
    assert idle.idle > 0.15

    def spin():
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            pass

    hloop.call_soon(spin)
    hloop.call_soon(hloop.stop)
    hloop.run_forever()
    busy = oxloop.health(hloop)
    assert busy.utilization > 0.8
    assert 0 <= busy.utilization <= 1


def test_counters_match_what_was_done(hloop):
    def noop():
        pass

    timers = [hloop.call_later(10, noop) for _ in range(5)]
    timers[0].cancel()
    timers[1].cancel()
    for _ in range(100):
        hloop.call_soon(noop)
    hloop.call_soon(hloop.stop)
    hloop.run_forever()
    h = oxloop.health(hloop)
    assert h.callbacks == 101
    assert h.lag.count == 101
    assert h.iterations == 1
    assert h.ready_max == 101
    assert (h.timers_cancelled, h.timers_pending, h.timers_fired) == (2, 3, 0)

    oxloop.reset_health(hloop)
    hloop.call_later(0, noop)
    hloop.call_later(0.001, hloop.stop)
    hloop.run_forever()
    h = oxloop.health(hloop)
    assert h.timers_fired == 2
    assert h.callbacks == 2


def test_threadsafe_wakeups_are_counted_and_figures_read_from_another_thread(hloop):
    seen = []

    def other():
        for _ in range(3):
            hloop.call_soon_threadsafe(seen.append, 1)
        seen.append(oxloop.health(hloop))
        hloop.call_soon_threadsafe(hloop.stop)

    hloop.call_soon(threading.Thread(target=other).start)
    hloop.run_forever()
    h = oxloop.health(hloop)
    readings = [x for x in seen if isinstance(x, oxloop.Health)]
    assert seen.count(1) == 3 and len(readings) == 1
    assert h.threadsafe_wakeups == 4
    assert readings[0].running >= 0


def test_a_closed_loop_keeps_its_figures(hloop):
    hloop.call_soon(hloop.stop)
    hloop.run_forever()
    hloop.close()
    h = oxloop.health(hloop)
    assert h.callbacks == 1
    assert h.fds_watched == 0


def test_slow_callbacks_are_logged_with_their_line(hloop, caplog):
    oxloop.configure_health(hloop, log_slow_callbacks=0.04)
    hloop.call_soon(blocker)
    hloop.call_soon(hloop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        hloop.run_forever()
    (record,) = [r for r in caplog.records if "took" in r.getMessage()]
    assert record.getMessage().startswith("Executing <Handle blocker()")
    assert f"blocker at {__file__}:{BLOCKER_LINE}" in record.getMessage()


def test_settings_are_checked_and_kept(hloop):
    with pytest.raises(ValueError):
        oxloop.configure_health(hloop, slow_callbacks=-1)
    with pytest.raises(ValueError):
        oxloop.configure_health(hloop, log_slow_callbacks=-1)
    with pytest.raises(TypeError):
        oxloop.configure_health(hloop, slow_callbacks=1.5)
    for bad in (-1, 10**9, 2**62):
        with pytest.raises(ValueError):
            oxloop.configure_health(hloop, slow_callbacks=bad)
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError):
            oxloop.configure_health(hloop, log_slow_callbacks=bad)
    settings = oxloop.configure_health(hloop, slow_callbacks=1, log_slow_callbacks=0.25)
    assert settings == {"enabled": True, "slow_callbacks": 1, "log_slow_callbacks": 0.25}
    for _ in range(3):
        hloop.call_soon(blocker)
    hloop.call_soon(hloop.stop)
    hloop.run_forever()
    assert len(oxloop.health(hloop).slow_callbacks) == 1
    with pytest.raises(ValueError):
        oxloop.health(hloop).lag.percentile(101)


def test_figures_turned_on_during_a_wait_give_its_callbacks_a_real_lag():
    loop = oxloop.new_event_loop()
    r, w = socket.socketpair()
    try:
        loop.add_reader(r, lambda: (r.recv(1), loop.stop()))

        def turn_on_and_wake():
            time.sleep(0.05)
            oxloop.configure_health(loop, enabled=True)
            w.send(b"x")

        thread = threading.Thread(target=turn_on_and_wake)
        thread.start()
        loop.run_forever()
        thread.join()
        h = oxloop.health(loop)
        assert h.callbacks == 1
        assert h.lag.max < 60  # not the machine's uptime
    finally:
        loop.close()
        r.close()
        w.close()


def test_percentiles_take_the_nearest_rank_of_the_decimal_asked():
    # 999 lags in the first bucket, one in the second: p99.9 is the 999th
    # lag, even where 99.9 / 100 * 1000 is over 999 in floats.
    lag = _health.Lag([(0, 0, 10, 999), (1, 11, 20, 1)], 1000, 20)
    assert lag.percentile(99.9) == lag.p999 == 10 / 1e9
    assert lag.percentile(100) == 20 / 1e9
    assert lag.percentile(99.91) == 20 / 1e9


def test_io_callbacks_are_counted(hloop):
    async def main():
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        w.write(b"ping")
        assert await r.readexactly(4) == b"ping"
        w.close()
        await w.wait_closed()

    async def echo(reader, writer):
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    server = hloop.run_until_complete(asyncio.start_server(echo, "127.0.0.1", 0))
    hloop.run_until_complete(main())
    server.close()
    hloop.run_until_complete(server.wait_closed())
    h = oxloop.health(hloop)
    assert h.io_events >= 2
    assert h.callbacks >= h.io_events


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_from_zero(hloop):
    hloop.call_soon(hloop.stop)
    hloop.run_forever()
    assert oxloop.health(hloop).callbacks == 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, str(oxloop.health(hloop).callbacks).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        assert f.read() == "0"


def test_prometheus_text_parses(hloop):
    parser = pytest.importorskip("prometheus_client.parser")
    hloop.call_soon(blocker)
    hloop.call_soon(hloop.stop)
    hloop.run_forever()
    text = oxloop.health(hloop).to_prometheus({"loop": 'main "1"'})
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["oxloop_utilization"].samples[0].labels == {"loop": 'main "1"'}
    assert families["oxloop_callbacks"].samples[0].value == 2
    lag = families["oxloop_lag_seconds"]
    assert lag.type == "histogram"
    counts = [s.value for s in lag.samples if s.name.endswith("_bucket")]
    assert counts == sorted(counts) and counts[-1] == 2
    assert families["oxloop_slowest_callback_seconds"].samples[0].value >= 0.05


def test_prometheus_collector(hloop):
    registry = pytest.importorskip("prometheus_client").CollectorRegistry()
    from oxloop._export import HealthCollector

    registry.register(HealthCollector(hloop, {"loop": "main"}))
    hloop.call_soon(hloop.stop)
    hloop.run_forever()
    assert registry.get_sample_value("oxloop_callbacks_total", {"loop": "main"}) == 1


def test_opentelemetry_metrics(hloop):
    sdk = pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = sdk.MeterProvider(metric_readers=[reader])
    oxloop.observe_health(hloop, meter_provider=provider, attributes={"loop": "main"})

    def collect():
        (resource,) = reader.get_metrics_data().resource_metrics
        (scope,) = resource.scope_metrics
        assert scope.scope.name == "oxloop"
        points = {}
        for metric in scope.metrics:
            (point,) = metric.data.data_points
            assert point.attributes == {"loop": "main"}
            points[metric.name] = point.value
        return points

    hloop.call_soon(blocker)
    hloop.call_soon(hloop.stop)
    hloop.run_forever()
    first = collect()
    assert first["oxloop.loop.callbacks"] == 2
    assert first["oxloop.loop.iterations"] == 1
    assert 0 < first["oxloop.loop.utilization"] <= 1
    assert first["oxloop.loop.busy_time"] >= 0.05
    assert first["oxloop.loop.slowest_callback"] >= 0.05
    assert first["oxloop.loop.lag.p99"] >= 0.05  # stop waited behind the blocker
    assert first["oxloop.loop.lag.min"] <= first["oxloop.loop.lag.p50"]

    for _ in range(10):
        hloop.call_soon(int)
    hloop.call_soon(hloop.stop)
    hloop.run_forever()
    second = collect()
    assert second["oxloop.loop.callbacks"] == 13
    # The lag gauges cover the callbacks since the first collection only.
    assert second["oxloop.loop.lag.max"] < 0.05
    assert second["oxloop.loop.lag.sum"] >= first["oxloop.loop.lag.sum"]


def test_opentelemetry_publishes_nothing_for_a_collected_loop(loop, is_oxloop):
    if not is_oxloop:
        pytest.skip("oxloop only")
    sdk = pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    other = oxloop.new_event_loop()
    oxloop.observe_health(other, meter_provider=sdk.MeterProvider(metric_readers=[reader]))
    other.close()
    del other
    import gc

    gc.collect()
    data = reader.get_metrics_data()
    assert data is None or not any(
        m.data.data_points
        for r in data.resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
    )


def test_figures_turned_on_with_callbacks_queued_give_sensible_lags(loop, is_oxloop):
    if not is_oxloop:
        pytest.skip("oxloop only")
    for _ in range(3):
        loop.call_soon(int)
    oxloop.configure_health(loop, enabled=True)
    loop.call_soon(loop.stop)
    loop.run_forever()
    h = oxloop.health(loop)
    assert h.callbacks == 4
    assert h.lag.max < 60  # queued while off: due when the figures began
