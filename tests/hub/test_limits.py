"""The hub's byte accounting on its own (chrysalis_memory.hub.limits): send queues
bounded per connection and in all, reading paused past a receive budget."""

from __future__ import annotations

import pytest

from chrysalis_memory.hub.limits import ReceiveBudget, SendQueues

KIB = 1024


class Dropped:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


def frame(size: int, fill: bytes = b"x") -> bytes:
    return fill * size


async def test_a_queue_is_bounded_in_bytes_and_an_empty_one_takes_one_frame() -> None:
    queues = SendQueues(per_queue=100 * KIB, frames=1000, total=10_000 * KIB)
    dropped = Dropped()
    queue = queues.open(dropped)
    assert queue.put(frame(300 * KIB))  # bigger than the bound, but the queue was empty
    assert not queue.put(frame(1))  # anything more: this reader is dropped
    assert queue.closed and len(dropped.reasons) == 1
    assert "send_queue_bytes" in dropped.reasons[0]
    assert queues.bytes == 0  # what it held no longer counts
    assert not queue.put(frame(1))  # a closed queue takes nothing and drops nobody again
    assert len(dropped.reasons) == 1


async def test_frames_are_counted_until_written_and_twice_while_being_written() -> None:
    queues = SendQueues(per_queue=1000 * KIB, frames=1000, total=10_000 * KIB)
    queue = queues.open(Dropped())
    first, second = frame(100 * KIB, b"a"), frame(50 * KIB, b"b")
    assert queue.put(first) and queue.put(second)
    assert queues.bytes == queue.bytes == 150 * KIB
    taken = await queue.get()
    assert taken is first
    assert queues.bytes == queue.bytes == 250 * KIB  # the transport's copy of it
    queue.sent(taken)
    assert queues.bytes == queue.bytes == 50 * KIB
    queue.sent(await queue.get())
    assert queues.bytes == queue.bytes == 0 and queue.frames == 0


async def test_a_frame_relayed_to_many_queues_counts_once() -> None:
    queues = SendQueues(per_queue=1000 * KIB, frames=1000, total=300 * KIB)
    readers = [queues.open(Dropped()) for _ in range(50)]
    update = frame(200 * KIB)
    assert all(q.put(update) for q in readers)
    assert queues.bytes == 200 * KIB
    for q in readers[:-1]:
        q.close()
    assert queues.bytes == 200 * KIB  # one queue still holds it
    readers[-1].close()
    assert queues.bytes == 0


async def test_at_the_total_the_reader_holding_the_most_is_dropped() -> None:
    queues = SendQueues(per_queue=1000 * KIB, frames=1000, total=500 * KIB)
    slow, slower, fresh = Dropped(), Dropped(), Dropped()
    a, b, c = queues.open(slow), queues.open(slower), queues.open(fresh)
    assert a.put(frame(100 * KIB)) and b.put(frame(300 * KIB))
    assert c.put(frame(200 * KIB))  # 600 > 500: b holds the most and goes
    assert b.closed and slower.reasons and "send_queue_total_bytes" in slower.reasons[0]
    assert not a.closed and not c.closed
    assert queues.bytes == 300 * KIB
    # The reader that would pass the total is itself the largest: it is the one dropped.
    assert not c.put(frame(350 * KIB))
    assert c.closed and not a.closed and queues.bytes == 100 * KIB


async def test_a_copy_being_written_past_the_total_drops_the_largest() -> None:
    queues = SendQueues(per_queue=1000 * KIB, frames=1000, total=500 * KIB)
    dropped = Dropped()
    queue = queues.open(dropped)
    other = queues.open(Dropped())
    assert queue.put(frame(300 * KIB)) and other.put(frame(100 * KIB))
    taken = await queue.get()  # 400 + the 300 copy: over, and queue holds the most
    assert queue.closed and dropped.reasons
    assert queues.bytes == 100 * KIB
    queue.sent(taken)  # the writer's write failed on the aborted connection
    assert queues.bytes == 100 * KIB


class FakeReader:
    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        assert self.reading
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading
        self.reading = True


def test_reading_pauses_past_the_total_but_one_frame_in_progress_goes_on() -> None:
    budget = ReceiveBudget(total=1000, per_connection=600, slots=1)
    a, b, c = FakeReader(), FakeReader(), FakeReader()
    budget.update(a, 500)
    budget.update(b, 400)
    assert (a.reading, b.reading) == (True, True)
    budget.update(c, 200)  # 1100 > 1000: only c, in the middle of a frame, reads on
    assert (a.reading, b.reading, c.reading) == (False, False, True)
    assert budget.paused == 2 and budget.bytes == 1100
    budget.update(c, 550)  # c finishes its frame
    assert c.reading
    budget.update(c, 0)  # ... and its session takes it: the slot goes to a (paused longest)
    assert (a.reading, b.reading, c.reading) == (True, False, False)
    budget.update(a, 0)  # 400 <= 750: everyone reads again
    assert (a.reading, b.reading, c.reading) == (True, True, True)
    assert budget.paused == 0


def test_a_connection_holding_more_than_a_frame_pauses_until_its_session_takes_it() -> None:
    budget = ReceiveBudget(total=10_000, per_connection=600)
    a = FakeReader()
    budget.update(a, 601)
    assert not a.reading
    budget.update(a, 100)
    assert a.reading


def test_a_lost_connection_gives_its_bytes_back() -> None:
    budget = ReceiveBudget(total=1000, per_connection=800, slots=1)
    a, b = FakeReader(), FakeReader()
    budget.update(a, 700)
    budget.update(b, 400)  # over: b (partial) reads on, a pauses
    assert not a.reading and b.reading
    budget.remove(b)
    assert budget.bytes == 700 and a.reading  # under three quarters again


@pytest.mark.parametrize("slots", [1, 2])
def test_never_more_than_the_bound_whatever_the_order(slots: int) -> None:
    """Twenty readers sending frames of up to 600 bytes in 100-byte reads, in turns:
    the budget never holds more than total + slots * per_connection + one read."""
    budget = ReceiveBudget(total=2000, per_connection=600, slots=slots)
    readers = [FakeReader() for _ in range(20)]
    held = dict.fromkeys(readers, 0)
    most = 0
    for step in range(2000):
        reader = readers[(step * 7) % 20]
        if reader.reading and held[reader] < 600:
            held[reader] += 100
        elif held[reader] >= 600 or step % 3 == 0:
            held[reader] = 0  # its session took the frame
        budget.update(reader, held[reader])
        most = max(most, budget.bytes)
    assert most <= 2000 + slots * 600 + 100
