import pytest

from twin.kernel import PRIO_MSG, PRIO_TIMER, PRIO_WORLD, EventKernel


def test_order_is_time_priority_then_insertion():
    k = EventKernel()
    seen = []
    k.schedule(2.0, PRIO_MSG, seen.append, "late")
    k.schedule(1.0, PRIO_TIMER, seen.append, "timer")
    k.schedule(1.0, PRIO_MSG, seen.append, "msg-a")
    k.schedule(1.0, PRIO_MSG, seen.append, "msg-b")
    k.schedule(1.0, PRIO_WORLD, seen.append, "world")
    k.run_until(1.5)
    assert seen == ["world", "msg-a", "msg-b", "timer"]
    assert k.now == 1.5
    k.run_until(3.0)
    assert seen[-1] == "late"


def test_no_scheduling_in_the_past():
    k = EventKernel()
    k.run_until(5.0)
    with pytest.raises(ValueError):
        k.schedule(4.0, PRIO_MSG, print)
