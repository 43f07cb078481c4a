"""Broker faults on a 3-node KRaft cluster (topics with 3 replicas, min.insync.replicas=2),
under steady load, with 2 ingest processes, 3 dispatchers and 2 retry schedulers.

Each scenario ends with the harness's checker (every 202 kept: delivered or FAILURE with a
dead letter; duplicates counted) and reports how many requests got 503 and when, counted
from the fault. Outages last DOWN seconds: twice the cluster's broker session (4 s, set in
deploy/local/stack.sh), so the controller has fenced the node before it returns.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.faults.cluster import (
    events_leader,
    fully_replicated,
    replication_configs,
    unavailability,
)
from tests.faults.harness import SESSION_TIMEOUT, FaultRun
from tests.support.private_stack import PrivateNamespace, PrivateStack
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300)]

DOWN = 8.0
# Before the fault and after recovery: ~5 s of load each at the harness's 80 requests/s.
WARM_UP = 400
TAIL = 400
REPLICAS = 3
MIN_INSYNC = "2"


def cluster_run(scenario: str, ns: PrivateNamespace, log_dir: Path) -> FaultRun:
    return FaultRun(scenario, ns, log_dir, ingests=2, dispatchers=3, schedulers=2)


async def start_nodes(cluster: PrivateStack) -> float:
    """Start every node that is down (stack.sh waits until each answers); returns when."""
    await asyncio.to_thread(cluster.start, "kafka")
    return time.monotonic()


async def wait_in_sync(ns: PrivateNamespace, what: str) -> float:
    return await wait_until(lambda: fully_replicated(ns), timeout=90, what=what, every=0.5)


async def test_topics_on_the_cluster_have_three_copies_two_in_sync(
    cluster_namespace: PrivateNamespace,
) -> None:
    configs = await replication_configs(cluster_namespace)
    assert configs
    assert set(configs.values()) == {(REPLICAS, MIN_INSYNC)}, configs


async def test_sigkill_the_events_leader_then_restart_it(
    cluster: PrivateStack, cluster_namespace: PrivateNamespace, tmp_path: Path
) -> None:
    async with cluster_run("cluster-leader-sigkill", cluster_namespace, tmp_path) as run:
        await run.warm_up(WARM_UP)
        node = await events_leader(cluster_namespace)
        fault = time.monotonic()
        await asyncio.to_thread(cluster.end_node, node, signal.SIGKILL)
        await asyncio.sleep(DOWN)
        restarted = await start_nodes(cluster)
        await run.wait_delivering_since(restarted, "deliveries after the restart")
        await run.tail(restarted, TAIL)
        took = await wait_in_sync(cluster_namespace, "the restarted node back in every ISR")
        run.notes += [
            f"killed node {node} (led most events partitions), restarted after {DOWN:.0f}s; "
            f"in sync again {restarted - fault + took:.1f}s after the kill",
            unavailability(run.traffic, fault).note(),
        ]
        await run.finish()


async def test_sigstop_a_broker_past_its_session_then_sigcont(
    cluster: PrivateStack, cluster_namespace: PrivateNamespace, tmp_path: Path
) -> None:
    async with cluster_run("cluster-broker-sigstop", cluster_namespace, tmp_path) as run:
        await run.warm_up(WARM_UP)
        node = await events_leader(cluster_namespace)
        fault = time.monotonic()
        cluster.signal_node(node, signal.SIGSTOP)
        try:
            await asyncio.sleep(DOWN)
        finally:
            cluster.signal_node(node, signal.SIGCONT)
        resumed = time.monotonic()
        await run.wait_delivering_since(resumed, "deliveries after SIGCONT")
        await run.tail(resumed, TAIL)
        took = await wait_in_sync(cluster_namespace, "the resumed node back in every ISR")
        run.notes += [
            f"froze node {node} (led most events partitions) for {DOWN:.0f}s; "
            f"in sync again {resumed - fault + took:.1f}s after SIGSTOP",
            unavailability(run.traffic, fault).note(),
        ]
        await run.finish()


async def test_rolling_restart_of_every_broker(
    cluster: PrivateStack, cluster_namespace: PrivateNamespace, tmp_path: Path
) -> None:
    async with cluster_run("cluster-rolling-restart", cluster_namespace, tmp_path) as run:
        await run.warm_up(WARM_UP)
        fault = time.monotonic()
        steps = []
        for node in range(1, REPLICAS + 1):
            # What an operator does: SIGTERM (controlled shutdown moves leadership away
            # first), start it again, and wait until it is back in every ISR.
            began = time.monotonic()
            await asyncio.to_thread(cluster.end_node, node, signal.SIGTERM)
            await start_nodes(cluster)
            await wait_in_sync(cluster_namespace, f"node {node} back in every ISR")
            steps.append(f"node {node} {time.monotonic() - began:.1f}s")
        done = time.monotonic()
        await run.tail(done, TAIL)
        # Every 202 is for a record on two brokers at least: the topics say so, and the
        # checker finds every one of them delivered after three restarts.
        configs = await replication_configs(cluster_namespace)
        assert set(configs.values()) == {(REPLICAS, MIN_INSYNC)}, configs
        run.notes += [
            f"restarted one at a time: {', '.join(steps)}",
            unavailability(run.traffic, fault).note(),
        ]
        await run.finish()


async def test_two_brokers_down_ingest_refuses_then_recovers_by_itself(
    cluster: PrivateStack, cluster_namespace: PrivateNamespace, tmp_path: Path
) -> None:
    async with cluster_run("cluster-no-quorum", cluster_namespace, tmp_path) as run:
        await run.warm_up(WARM_UP)
        survivor = await events_leader(cluster_namespace)
        victims = [n for n in range(1, REPLICAS + 1) if n != survivor]
        fault = time.monotonic()
        # Together, so that the controller cannot shrink any ISR to the survivor first.
        await asyncio.gather(
            *(asyncio.to_thread(cluster.end_node, n, signal.SIGKILL) for n in victims)
        )
        down = time.monotonic()
        await asyncio.sleep(DOWN)
        restart = time.monotonic()
        # A request sent once both were gone can reach one broker at most: never a 202.
        during = run.traffic.sent_between(down, restart)
        accepted = [a for a in during if a.status == 202]
        refused = [a for a in during if a.status == 503]
        restarted = await start_nodes(cluster)
        await run.wait_delivering_since(restarted, "deliveries after the quorum returned")
        await run.tail(restarted, TAIL)
        await wait_in_sync(cluster_namespace, "both nodes back in every ISR")
        run.notes += [
            f"killed nodes {victims}, node {survivor} alone for {DOWN:.0f}s: "
            f"{len(refused)} answers 503 and {len(accepted)} answers 202 to requests sent "
            f"meanwhile; deliveries again {time.monotonic() - restarted:.1f}s after restart",
            unavailability(run.traffic, fault).note(),
        ]
        assert not accepted, f"202 without a quorum: {accepted[:3]}"
        assert refused, "no request was refused while two brokers were down"
        await run.finish()


async def test_sigkill_a_dispatcher_and_an_ingest_process(
    cluster_namespace: PrivateNamespace, tmp_path: Path
) -> None:
    async with cluster_run("cluster-worker-sigkill", cluster_namespace, tmp_path) as run:
        await run.warm_up(WARM_UP)
        ingest = run.services.ingests[1]
        dispatcher = run.services.dispatchers[0]
        await wait_until(lambda: run.targets.in_flight > 0, timeout=10, what="a request in flight")
        fault = time.monotonic()
        # A load balancer's health check takes the dead ingest out of the rotation; the
        # requests it held die with it, unanswered and never promised.
        run.traffic.drop(ingest.url)
        run.services.kill(ingest.proc)
        run.services.kill(dispatcher)
        # The two survivors get the dead member's partitions once its session expires.
        took = await wait_until(
            run.services.dispatchers_cover_all,
            timeout=SESSION_TIMEOUT * 4,
            what="the two remaining dispatchers to hold every partition",
            details=run.services.tails,
        )
        covered = time.monotonic()
        await run.wait_delivering_since(covered, "deliveries after the rebalance")
        await run.tail(fault, TAIL)
        run.notes += [
            f"killed ingest :{ingest.url.rsplit(':', 1)[1]} and a dispatcher; the other two "
            f"held every partition {took:.1f}s later",
            unavailability(run.traffic, fault).note(),
        ]
        await run.finish()
