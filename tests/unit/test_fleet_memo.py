"""FleetMemo: one inspect per distinct image across a fleet read, and no host held hostage by another."""

from __future__ import annotations

import threading
import time

import pytest

from acgs_remediate.facts import FleetMemo


def test_hosts_asking_for_the_same_image_share_one_inspect() -> None:
    memo = FleetMemo(wait=5)
    calls: list[str] = []
    release = threading.Event()

    def slow_inspect() -> list[str]:
        calls.append("inspect")
        release.wait(5)
        return ["sha256:a", "sha256:b"]

    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(memo.chains("img", slow_inspect))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    release.set()
    for t in threads:
        t.join(5)
    assert calls == ["inspect"]
    assert results == [["sha256:a", "sha256:b"]] * 8


def test_a_failed_inspect_on_one_engine_lets_the_others_ask_their_own() -> None:
    memo = FleetMemo(wait=5)
    started = threading.Event()
    proceed = threading.Event()

    def failing() -> list[str]:
        started.set()
        proceed.wait(5)
        raise ConnectionError("engine went away")

    errors: list[BaseException] = []

    def owner() -> None:
        try:
            memo.chains("img", failing)
        except ConnectionError as exc:
            errors.append(exc)

    t = threading.Thread(target=owner)
    t.start()
    started.wait(5)
    waiter: list[list[str]] = []
    w = threading.Thread(target=lambda: waiter.append(memo.chains("img", lambda: ["sha256:own"])))
    w.start()
    time.sleep(0.1)
    proceed.set()
    t.join(5)
    w.join(5)
    assert len(errors) == 1  # the owner's host fails with its own engine's error
    assert waiter == [["sha256:own"]]  # the other host answered from its own engine
    assert memo.chains("img", lambda: pytest.fail("already known")) == ["sha256:own"]


def test_a_slow_engine_does_not_hold_the_others_longer_than_the_wait() -> None:
    memo = FleetMemo(wait=0.2)
    hold = threading.Event()
    t = threading.Thread(target=lambda: memo.chains("img", lambda: (hold.wait(5), ["sha256:late"])[1]))
    t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    assert memo.chains("img", lambda: ["sha256:mine"]) == ["sha256:mine"]
    assert time.monotonic() - t0 < 2
    hold.set()
    t.join(5)


def test_layer_sizes_are_shared_only_between_engines_with_the_same_storage_driver() -> None:
    memo = FleetMemo()
    memo.add("overlay2", {"img": ["sha256:a"]}, {"sha256:a": 10})
    assert memo.sizes("overlay2") == {"sha256:a": 10}
    assert memo.sizes("btrfs") == {}
    # chain IDs do not depend on the driver
    assert memo.chains("img", lambda: pytest.fail("already known")) == ["sha256:a"]
