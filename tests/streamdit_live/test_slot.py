import threading
import time

from streamdit_live.slot import LatestSlot


def test_latest_wins_and_counts_the_dropped():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) and slot.put(2) and slot.put(3)
    assert len(slot) == 1 and slot.dropped == 2 and slot.puts == 3
    assert slot.get(timeout=0) == 3
    assert slot.get(timeout=0) is None


def test_get_times_out_without_an_item():
    slot: LatestSlot[int] = LatestSlot()
    start = time.monotonic()
    assert slot.get(timeout=0.05) is None
    assert 0.04 <= time.monotonic() - start < 1.0


def test_clear_drops_the_pending_item():
    slot: LatestSlot[str] = LatestSlot()
    slot.put("stale")
    assert slot.clear() == 1 and slot.clear() == 0
    assert slot.get(timeout=0) is None and slot.dropped == 1


def test_close_wakes_a_waiting_consumer_and_refuses_puts():
    slot: LatestSlot[int] = LatestSlot()
    woke = threading.Event()
    result = []

    def consumer():
        result.append(slot.get(timeout=10.0))
        woke.set()

    thread = threading.Thread(target=consumer)
    thread.start()
    slot.close()
    assert woke.wait(2.0), "close() did not wake the consumer"
    thread.join(2.0)
    assert result == [None] and slot.closed
    assert slot.put(5) is False


def test_an_item_put_before_close_can_still_be_taken():
    slot: LatestSlot[int] = LatestSlot()
    slot.put(7)
    slot.close()
    assert slot.get(timeout=0) == 7 and slot.get(timeout=0) is None


def test_threads_see_increasing_items_and_the_last_one():
    slot: LatestSlot[int] = LatestSlot()
    n = 20_000
    seen: list[int] = []

    def consumer():
        while True:
            item = slot.get(timeout=5.0)
            if item is None:
                return
            seen.append(item)

    thread = threading.Thread(target=consumer)
    thread.start()
    for i in range(n):
        slot.put(i)
    slot.close()
    thread.join(5.0)
    assert not thread.is_alive()
    assert seen and seen[-1] == n - 1
    assert all(a < b for a, b in zip(seen, seen[1:], strict=False))  # never an older item
    assert len(seen) + slot.dropped == n  # every item was either taken or counted as dropped
