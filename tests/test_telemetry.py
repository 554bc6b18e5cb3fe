"""Telemetry behaviour, checklist TEL-01..13 (otp-semantics.md section 1.10)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import trio

import arboretum
from arboretum import telemetry
from arboretum._core import _telemetry

Calls = list[tuple[tuple[str, ...], Mapping[str, Any], Mapping[str, Any], Any]]


@pytest.fixture(autouse=True)
def clean_handlers() -> Iterator[None]:
    _telemetry._reset_for_tests()
    yield
    _telemetry._reset_for_tests()


def recorder(calls: Calls) -> telemetry.Handler:
    def handler(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        calls.append((event, measurements, metadata, config))

    return handler


def test_reachable_as_arboretum_telemetry() -> None:
    assert arboretum.telemetry is telemetry
    assert arboretum.telemetry.attach is _telemetry.attach
    assert telemetry.AlreadyAttached.__module__ == "arboretum.telemetry"


# ---------------------------------------------------------------- TEL-01 names


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (["a", "b"], TypeError),
        ("a.b", TypeError),
        ((), ValueError),
        (("a", 1), TypeError),
        (("a", None), TypeError),
    ],
)
def test_tel01_event_names_are_nonempty_tuples_of_str(bad: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        telemetry.attach("h", bad, recorder([]))
    with pytest.raises(error):
        telemetry.attach_many("h", [bad], recorder([]))
    assert telemetry.list_handlers() == []


@pytest.mark.parametrize(("bad", "error"), [((), ValueError), (["a"], TypeError)])
def test_tel01_span_prefix_validated(bad: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        telemetry.span(bad)


# ---------------------------------------------------------------- TEL-02/03 attach/detach


def test_tel02_duplicate_handler_id_raises_already_attached() -> None:
    telemetry.attach("my-id", ("a", "b"), recorder([]))
    with pytest.raises(telemetry.AlreadyAttached, match="'my-id'") as info:
        telemetry.attach("my-id", ("other", "event"), recorder([]))  # ids are global
    assert info.value.handler_id == "my-id"
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, arboretum.ArboretumError)
    assert [h.event for h in telemetry.list_handlers()] == [("a", "b")]


def test_tel03_attach_many_and_detach_from_all_events() -> None:
    calls: Calls = []
    telemetry.attach_many("many", [("a", "x"), ("b", "y")], recorder(calls), config={"c": 1})
    telemetry.execute(("a", "x"), {"n": 1})
    telemetry.execute(("b", "y"), {"n": 2}, {"m": True})
    assert calls == [
        (("a", "x"), {"n": 1}, {}, {"c": 1}),
        (("b", "y"), {"n": 2}, {"m": True}, {"c": 1}),
    ]
    assert telemetry.detach("many") is True
    assert telemetry.detach("many") is False  # not found
    assert not telemetry.has_handlers(("a", "x"))
    assert not telemetry.has_handlers(("b", "y"))
    telemetry.execute(("a", "x"), {"n": 3})
    assert len(calls) == 2


def test_tel03_attach_many_rejects_a_single_event_name_and_empty_lists() -> None:
    with pytest.raises(TypeError, match="one event name"):
        telemetry.attach_many("h", ("a", "b"), recorder([]))
    with pytest.raises(ValueError, match="at least one"):
        telemetry.attach_many("h", [], recorder([]))
    with pytest.raises(TypeError, match="callable"):
        telemetry.attach("h", ("a",), "not callable")  # type: ignore[arg-type]
    assert telemetry.list_handlers() == []


def test_tel03_detach_keeps_other_handlers_of_the_same_event() -> None:
    first: Calls = []
    second: Calls = []
    telemetry.attach("first", ("e",), recorder(first))
    telemetry.attach("second", ("e",), recorder(second))
    telemetry.detach("first")
    telemetry.execute(("e",), {"v": 1})
    assert (len(first), len(second)) == (0, 1)


# ---------------------------------------------------------------- TEL-04/05 execute


async def test_tel04_execute_calls_handlers_synchronously_in_the_caller() -> None:
    seen: list[object] = []

    def handler(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        seen.append((trio.lowlevel.current_task(), event, dict(measurements), dict(metadata)))

    telemetry.attach("sync", ("app", "op"), handler)
    assert telemetry.execute(("app", "op"), {"latency": 3}, {"who": "me"}) is None
    assert seen == [(trio.lowlevel.current_task(), ("app", "op"), {"latency": 3}, {"who": "me"})]


def test_tel04_execute_without_handlers_is_a_no_op() -> None:
    assert telemetry.has_handlers(("nobody", "listens")) is False
    # not even the arguments are checked when nobody listens
    telemetry.execute(("nobody", "listens"), 5)  # type: ignore[arg-type]


def test_tel04_has_handlers_tracks_attach_and_detach() -> None:
    event = ("arboretum", "server", "call", "stop")
    assert not telemetry.has_handlers(event)
    telemetry.attach("h", event, recorder([]))
    assert telemetry.has_handlers(event)
    assert not telemetry.has_handlers(event[:3])  # exact names only, no prefix matching
    telemetry.detach("h")
    assert not telemetry.has_handlers(event)


def test_tel05_bare_number_measurements_are_refused_with_a_hint() -> None:
    telemetry.attach("h", ("e",), recorder([]))
    with pytest.raises(TypeError, match=r"\{'value': 5\}"):
        telemetry.execute(("e",), 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="metadata"):
        telemetry.execute(("e",), {}, ["not", "a", "mapping"])  # type: ignore[arg-type]


# ---------------------------------------------------------------- TEL-06/07 failing handlers


def test_tel06_tel07_failing_handler_is_detached_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good: Calls = []
    failures: Calls = []

    def bad(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        raise RuntimeError("handler bug")

    telemetry.attach_many("bad", [("e",), ("other",)], bad, config="cfg")
    telemetry.attach("good", ("e",), recorder(good))
    telemetry.attach("failures", ("telemetry", "handler", "failure"), recorder(failures))

    with caplog.at_level(logging.ERROR, logger="arboretum.telemetry"):
        telemetry.execute(("e",), {"v": 1})  # does not raise

    assert len(good) == 1  # the other handler still ran
    assert [h.id for h in telemetry.list_handlers()] == ["good", "failures"]
    assert not telemetry.has_handlers(("other",))  # detached from ALL its events

    [(event, measurements, metadata, _)] = failures
    assert event == ("telemetry", "handler", "failure")
    assert set(measurements) == {"monotonic_time", "system_time"}
    assert all(isinstance(v, int) for v in measurements.values())
    assert metadata["event_name"] == ("e",)
    assert metadata["handler_id"] == "bad"
    assert metadata["handler_config"] == "cfg"
    assert metadata["kind"] == "error"
    assert isinstance(metadata["reason"], RuntimeError)
    assert isinstance(metadata["stacktrace"], traceback.StackSummary)
    assert metadata["stacktrace"][-1].name == "bad"

    [record] = caplog.records
    assert record.name == "arboretum.telemetry"
    assert record.levelno == logging.ERROR
    assert "'bad'" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError

    telemetry.execute(("e",), {"v": 2})
    assert len(good) == 2
    assert len(failures) == 1


def test_tel06_failing_failure_handler_does_not_loop(caplog: pytest.LogCaptureFixture) -> None:
    def bad(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        raise ValueError(event)

    telemetry.attach("bad", ("e",), bad)
    telemetry.attach("bad-failure", ("telemetry", "handler", "failure"), bad)
    with caplog.at_level(logging.ERROR, logger="arboretum.telemetry"):
        telemetry.execute(("e",), {})
    assert telemetry.list_handlers() == []
    assert len(caplog.records) == 2


def test_tel06_base_exceptions_from_handlers_propagate() -> None:
    def interrupt(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        raise KeyboardInterrupt

    telemetry.attach("ki", ("e",), interrupt)
    with pytest.raises(KeyboardInterrupt):
        telemetry.execute(("e",), {})
    assert [h.id for h in telemetry.list_handlers()] == ["ki"]


# ---------------------------------------------------------------- TEL-08..11 span


def span_events(prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [(*prefix, "start"), (*prefix, "stop"), (*prefix, "exception")]


def test_tel08_tel09_span_start_and_stop() -> None:
    prefix = ("app", "work")
    with telemetry.capture(span_events(prefix)) as seen:
        with telemetry.span(prefix, {"job": 7}) as s:
            assert isinstance(s, telemetry.Span)
            s.metadata["result"] = "ok"
            s.measurements["items"] = 3
            s.measurements["duration"] = -1  # cannot override
            s.measurements["monotonic_time"] = -1
    start, stop = seen
    assert start.event == ("app", "work", "start")
    assert set(start.measurements) == {"monotonic_time", "system_time"}
    assert start.metadata["job"] == 7
    assert "result" not in start.metadata  # the start event got a snapshot
    assert stop.event == ("app", "work", "stop")
    assert set(stop.measurements) == {"duration", "monotonic_time", "items"}
    assert stop.measurements["items"] == 3
    assert stop.measurements["duration"] >= 0
    assert stop.measurements["monotonic_time"] >= start.measurements["monotonic_time"]
    assert (
        stop.measurements["duration"]
        == stop.measurements["monotonic_time"] - start.measurements["monotonic_time"]
    )
    assert stop.metadata["job"] == 7
    assert stop.metadata["result"] == "ok"


def test_tel08_span_start_metadata_is_copied() -> None:
    meta = {"job": 1}
    with telemetry.capture([("p", "start")]) as seen:
        with telemetry.span(("p",), meta) as s:
            s.metadata["job"] = 2
    assert meta == {"job": 1}
    assert seen[0].metadata["job"] == 1


def test_tel10_span_exception_event_and_reraise() -> None:
    prefix = ("app", "work")
    error = LookupError("missing")
    with telemetry.capture(span_events(prefix)) as seen:
        with pytest.raises(LookupError) as info:
            with telemetry.span(prefix, {"job": 7}) as s:
                s.metadata["step"] = 2
                raise error
    assert info.value is error  # unchanged
    start, exc = seen
    assert exc.event == ("app", "work", "exception")
    assert set(exc.measurements) == {"duration", "monotonic_time"}
    assert exc.metadata["job"] == 7
    assert exc.metadata["step"] == 2
    assert exc.metadata["kind"] == "error"
    assert exc.metadata["reason"] is error
    assert isinstance(exc.metadata["stacktrace"], traceback.StackSummary)
    assert exc.metadata["telemetry_span_context"] == start.metadata["telemetry_span_context"]


async def test_tel10_span_cancelled_reports_kind_cancelled_and_propagates(
    autojump_clock: object,
) -> None:
    prefix = ("app", "wait")
    with telemetry.capture(span_events(prefix)) as seen:
        with trio.move_on_after(5) as scope:
            with telemetry.span(prefix):
                await trio.sleep_forever()
    assert scope.cancelled_caught  # the Cancelled went through the span untouched
    assert [e.event[-1] for e in seen] == ["start", "exception"]
    assert seen[1].metadata["kind"] == "cancelled"
    assert isinstance(seen[1].metadata["reason"], trio.Cancelled)


def test_tel10_span_base_exception_kind_exit() -> None:
    with telemetry.capture([("p", "exception")]) as seen:
        with pytest.raises(KeyboardInterrupt):
            with telemetry.span(("p",)):
                raise KeyboardInterrupt
    assert seen[0].metadata["kind"] == "exit"


def test_tel11_span_context_unique_and_overridable() -> None:
    with telemetry.capture(span_events(("p",))) as seen:
        with telemetry.span(("p",)):
            pass
        with telemetry.span(("p",)):
            pass
        with telemetry.span(("p",), {"telemetry_span_context": "mine"}):
            pass
    contexts = [e.metadata["telemetry_span_context"] for e in seen]
    assert contexts[0] == contexts[1]
    assert contexts[2] == contexts[3]
    assert contexts[0] != contexts[2]
    assert contexts[4:] == ["mine", "mine"]


async def test_tel11_span_duration_is_wall_time_not_trio_time(autojump_clock: object) -> None:
    with telemetry.capture([("p", "stop")]) as seen:
        with telemetry.span(("p",)):
            await trio.sleep(3600)  # an hour of virtual time, ~0 of wall time
    [stop] = seen
    assert isinstance(stop.measurements["duration"], int)  # nanoseconds
    assert stop.measurements["duration"] < 60 * 10**9


def test_span_without_handlers_emits_nothing_and_still_works() -> None:
    with telemetry.span(("quiet",), {"a": 1}) as s:
        s.metadata["b"] = 2
    assert s.metadata["a"] == 1
    assert s.start_time > 0


# ---------------------------------------------------------------- TEL-12 list_handlers


def test_tel12_list_handlers_by_prefix() -> None:
    def handler(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        return None

    telemetry.attach("one", ("arboretum", "server", "start"), handler, config=1)
    telemetry.attach_many("two", [("arboretum", "server", "stop"), ("other", "x")], handler)
    everything = telemetry.list_handlers()
    assert sorted((h.id, h.event) for h in everything) == [
        ("one", ("arboretum", "server", "start")),
        ("two", ("arboretum", "server", "stop")),
        ("two", ("other", "x")),
    ]
    server = telemetry.list_handlers(("arboretum", "server"))
    assert sorted(h.id for h in server) == ["one", "two"]
    [one] = telemetry.list_handlers(("arboretum", "server", "start"))
    assert (one.function, one.config) == (handler, 1)
    assert telemetry.list_handlers(("nothing",)) == []
    with pytest.raises(TypeError):
        telemetry.list_handlers(["arboretum"])  # type: ignore[arg-type]


# ---------------------------------------------------------------- TEL-13 capture


def test_tel13_capture_records_in_order_and_detaches() -> None:
    with telemetry.capture([("a",), ("b",)]) as seen:
        assert len(telemetry.list_handlers()) == 2
        telemetry.execute(("a",), {"n": 1}, {"m": 1})
        telemetry.execute(("c",), {"n": 2})
        telemetry.execute(("b",), {"n": 3})
    assert seen == [
        telemetry.CapturedEvent(("a",), {"n": 1}, {"m": 1}),
        telemetry.CapturedEvent(("b",), {"n": 3}, {}),
    ]
    assert telemetry.list_handlers() == []
    telemetry.execute(("a",), {"n": 4})
    assert len(seen) == 2


def test_tel13_capture_detaches_on_error_and_nests() -> None:
    with pytest.raises(RuntimeError):
        with telemetry.capture([("a",)]) as outer:
            with telemetry.capture([("a",)]) as inner:
                telemetry.execute(("a",), {})
                raise RuntimeError
    assert (len(outer), len(inner)) == (1, 1)
    assert telemetry.list_handlers() == []
