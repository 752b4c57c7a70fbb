"""Job steps on Celery workers, end to end through Orthanc, with the failures the issue names.

Real parts only: the node and each worker are separate processes, the broker is RabbitMQ,
the database PostgreSQL, the PACS Orthanc; "there" is a worker in its own network
namespace reaching PostgreSQL and the broker over a veth link (``tests/netns_host.py``).
What must hold whatever happens: every study gets exactly one SEG and one SR, each job is
done once, no job is lost or duplicated.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from tests.distributed.conftest import Cluster
from tests.fixtures.dicom_study import BuiltSeries
from tests.netns_host import netns_host

pytestmark = [pytest.mark.orthanc, pytest.mark.timeout(900)]

SEG = "segnode tumour SEG - not for clinical use"
SR = "segnode tumour SR - not for clinical use"


def step_runs(cluster: Cluster, job_id: int, step: str) -> list[dict[str, Any]]:
    """Each recorded run of ``step``: the worker, its start and end (from the event's time
    and duration: the event is written when the step ends)."""
    runs = []
    for kind, at, duration_s, detail in cluster.events(job_id):
        if detail.get("step") == step and kind != "step_retry" and "record" in detail:
            runs.append({
                "worker": detail["record"].get("worker"),
                "start": at - timedelta(seconds=duration_s or 0),
                "end": at,
            })
    return runs


def assert_one_seg_and_sr(cluster: Cluster, orthanc_study: str) -> None:
    results = cluster.results_in_pacs(orthanc_study)
    assert len(results.get(SEG, [])) == 1, results
    assert len(results.get(SR, [])) == 1, results


def test_two_jobs_run_in_parallel_on_two_workers_one_on_another_host(
    cluster: Cluster,
    tcga_study: dict[str, BuiltSeries],
    second_tcga_study: dict[str, BuiltSeries],
) -> None:
    with netns_host(3) as there:
        cluster.start_worker("here")
        cluster.start_worker("there", host=there)
        first = cluster.upload_and_send(tcga_study)
        second = cluster.upload_and_send(second_tcga_study)
        rows = cluster.wait_all_done(2)
        assert [row.state for row in rows] == ["done", "done"]  # two jobs, none duplicated

        inferences = [step_runs(cluster, row.id, "inferring") for row in rows]
        assert all(len(runs) == 1 for runs in inferences), inferences
        (a,), (b,) = inferences
        owners = {a["worker"].split("/")[0], b["worker"].split("/")[0]}
        assert owners == {"here", "there"}, owners  # the far host ran one of them
        assert a["start"] < b["end"] and b["start"] < a["end"], (a, b)  # at the same time
        for orthanc_study in (first, second):
            assert_one_seg_and_sr(cluster, orthanc_study)
        health = cluster.sql("SELECT name, steps_done, stopped_at FROM workers ORDER BY name")
        assert [row.name for row in health] == ["here", "there"]
        assert all(row.steps_done >= 1 and row.stopped_at is None for row in health)


def test_worker_killed_broker_stopped_node_restarted_and_the_study_is_done_once(
    cluster: Cluster, tcga_study: dict[str, BuiltSeries]
) -> None:
    workers = {name: cluster.start_worker(name) for name in ("w1", "w2")}
    orthanc_study = cluster.upload_and_send(tcga_study)

    # 1. The node is killed while a worker converts, and started again.
    cluster.wait_for_job(lambda job: job.state == "converting", "a job converting")
    cluster.node.kill9()
    cluster.node.start()

    # 2. The broker is killed while a worker preprocesses, and is back 30 s later.
    cluster.wait_for_job(
        lambda job: job.state == "preprocessing" and job.step_owner, "preprocessing claimed"
    )
    cluster.broker.stop()
    time.sleep(30)
    cluster.broker.start()

    # 3. The worker running the inference is killed -9 (with its pool process).
    job = cluster.wait_for_job(
        lambda job: job.state == "inferring" and job.step_owner, "an inference under way", 300
    )
    victim = job.step_owner.split("/")[0]
    workers[victim].kill9()

    [done] = cluster.wait_all_done(1)
    assert_one_seg_and_sr(cluster, orthanc_study)
    kinds = [event[0] for event in cluster.events(done.id)]
    assert kinds.count("done") == 1 and kinds.count("claim_taken_over") == 1, kinds
    [inference] = step_runs(cluster, done.id, "inferring")
    assert not inference["worker"].startswith(victim), inference  # the survivor finished it
    deliveries = cluster.sql("SELECT destination, state FROM job_deliveries")
    assert [tuple(row) for row in deliveries] == [("pacs", "delivered")]
    node_log = cluster.node.log_path.read_text()
    assert "broker refused the step; publishing again later" in node_log
