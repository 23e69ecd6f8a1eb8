"""The fleet ingester on a real broker: 100 devices, peers, SIGKILL, a shared subscription."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from image.fleet.inventory import inventory
from image.fleet.peers import anomalies
from image.fleet.store import Store
from tests.fleet.ingester import IngestProcess
from tests.fleet.postgres import postgres_cluster
from tests.fleet.simulate import publish_all
from tests.inference.mqtt_broker import Broker, free_port

pytestmark = pytest.mark.integration
DEVIANT = {"dev-007": "slow", "dev-042": "wrong", "dev-077": "hot"}


def wait_rows(db: str, count: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        store = Store.open(db)
        n = store.counts()["windows"]
        store.close()
        if n >= count:
            return n
        time.sleep(0.1)
    pytest.fail(f"only {n} of {count} windows stored within {timeout} s")


def check_fleet(db: str, fleet: list[dict[str, object]]) -> None:
    store = Store.open(db)
    assert store.counts()["windows"] == len(fleet) == 400
    assert len(inventory(store)) == 100
    flags = anomalies(store)
    flagged = {f.device for f in flags}
    assert flagged == set(DEVIANT), [f.describe() for f in flags]
    metrics = {(f.device, f.metric) for f in flags}
    assert {("dev-007", "fps"), ("dev-007", "latency_p95")} <= metrics
    assert {("dev-042", "prediction_psi"), ("dev-042", "top1_mean")} <= metrics
    assert ("dev-077", "temp_max_c") in metrics
    hot = next(f for f in flags if f.metric == "temp_max_c")
    assert hot.value == pytest.approx(88.0) and hot.windows_marked == 3
    store.close()


def test_hundred_devices_three_deviants_flagged_none_other_on_sqlite(
    broker: Broker, fleet: list[dict[str, object]], tmp_path: Path
) -> None:
    db = str(tmp_path / "fleet.db")
    port = free_port()
    ing = IngestProcess(broker.port, db, "ing-a", tmp_path / "ing.log", "--metrics-port", str(port))
    publish_all(broker.port, fleet)
    wait_rows(db, 400)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'edgekiln_fleet_messages_total{outcome="stored",type="window"} 400.0' in body
    hot = re.search(r'edgekiln_device_temp_max_c\{device="dev-077",[^}]*\} (\S+)', body)
    assert hot is not None and float(hot.group(1)) == pytest.approx(88.0)
    assert "stored 400, duplicates 0" in ing.stop()
    check_fleet(db, fleet)


def test_ingester_killed_mid_stream_loses_and_doubles_nothing(
    broker: Broker, fleet: list[dict[str, object]], tmp_path: Path
) -> None:
    db = str(tmp_path / "fleet.db")
    ing = IngestProcess(broker.port, db, "ing-k", tmp_path / "ing.log")
    publisher = threading.Thread(target=publish_all, args=(broker.port, fleet[:200]))
    publisher.start()
    wait_rows(db, 40)  # rows are arriving: kill it while the first half still streams in
    ing.kill()  # SIGKILL: whatever it had not committed and acknowledged stays at the broker
    publisher.join()
    publish_all(broker.port, fleet[200:])  # the second half arrives while no ingester runs
    ing = IngestProcess(broker.port, db, "ing-k", tmp_path / "ing.log")
    wait_rows(db, 400)
    ing.stop()
    store = Store.open(db)
    ids = [r[0] for r in store.query("SELECT id FROM windows")]
    assert len(ids) == len(set(ids)) == 400
    assert set(ids) == {m["id"] for m in fleet}
    store.close()


def test_two_ingesters_on_one_shared_subscription_store_each_message_once(
    broker: Broker, fleet: list[dict[str, object]], tmp_path: Path
) -> None:
    db = str(tmp_path / "fleet.db")
    a = IngestProcess(broker.port, db, "ing-1", tmp_path / "a.log")
    b = IngestProcess(broker.port, db, "ing-2", tmp_path / "b.log")
    publish_all(broker.port, fleet)
    wait_rows(db, 400)
    stored = []
    for ing in (a, b):
        m = re.search(r"stored (\d+), duplicates (\d+)", ing.stop())
        assert m is not None
        stored.append(int(m.group(1)))
        assert int(m.group(2)) == 0  # the broker gave each message to one member only
    assert sum(stored) == 400 and min(stored) > 0  # both took a share
    check_fleet(db, fleet)


def test_the_same_message_twice_is_stored_once(
    fleet: list[dict[str, object]], tmp_path: Path
) -> None:
    store = Store.open(str(tmp_path / "f.db"))
    assert store.insert(dict(fleet[0])) is True
    assert store.insert(dict(fleet[0])) is False
    assert store.counts()["windows"] == 1


def test_hundred_devices_three_deviants_on_postgresql_and_duplicates_stored_once(
    broker: Broker, fleet: list[dict[str, object]], tmp_path: Path
) -> None:
    with postgres_cluster() as url:
        a = IngestProcess(broker.port, url, "ing-pg1", tmp_path / "a.log")
        b = IngestProcess(broker.port, url, "ing-pg2", tmp_path / "b.log")
        publish_all(broker.port, fleet)
        publish_all(broker.port, fleet[:50])  # devices re-sending after an outage
        wait_rows(url, 400)
        a.stop()
        b.stop()
        check_fleet(url, fleet)
        store = Store.open(url)
        assert store.engine == "postgresql"
        assert store.insert(dict(fleet[0])) is False
        store.close()


def test_a_retired_member_hands_over_its_queued_share_and_gets_no_more(
    broker: Broker, fleet: list[dict[str, object]], tmp_path: Path
) -> None:
    import subprocess
    import sys

    db = str(tmp_path / "fleet.db")
    a = IngestProcess(broker.port, db, "ing-old", tmp_path / "a.log")
    b = IngestProcess(broker.port, db, "ing-new", tmp_path / "b.log")
    a.stop()  # stopped, its session stays: the broker keeps queueing its share
    publish_all(broker.port, fleet[:200])
    time.sleep(1.0)
    store = Store.open(db)
    waiting = 200 - store.counts()["windows"]
    store.close()
    assert waiting > 0  # the stopped member's share waits at the broker
    done = subprocess.run(
        [sys.executable, "-m", "image.cli", "fleet", "ingest", "--broker",
         f"mqtt://127.0.0.1:{broker.port}", "--db", db, "--client-id", "ing-old", "--retire"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"stored {waiting}," in done.stderr
    wait_rows(db, 200)
    publish_all(broker.port, fleet[200:])  # now all of it goes to the remaining member
    wait_rows(db, 400, timeout=30)
    b.stop()
    check_fleet(db, fleet)
