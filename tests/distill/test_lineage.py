"""Distillation lineage in the store: sets, jobs, promotions, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from keel.distill import lineage
from keel.errors import InvalidRequest, NotFound
from tests.store.backends import db_url, store  # noqa: F401 - fixtures, one run per backend


def test_a_set_a_job_and_a_promotion_link_up(store):  # noqa: F811
    set_id = lineage.create_set(store, name="faq", source={"traces": ["t1", "t2"]},
                                splits={"train": {"dataset": "faq-train", "count": 2}})
    newer = lineage.create_set(store, name="faq", source={}, splits={})
    assert lineage.get_set(store, "faq")["id"] == newer  # a name means its newest
    assert lineage.get_set(store, set_id)["source"] == {"traces": ["t1", "t2"]}
    job_id = lineage.create_job(store, backend="local", base_model="smollm2", set_id=set_id,
                                options={"epochs": 1})
    job = lineage.get_job(store, job_id[:12])
    assert (job["status"], job["finished_at"], job["set_id"]) == ("queued", None, set_id)
    lineage.update_job(store, job_id, status="running", external_id="ftjob-1",
                       events=[{"message": "started"}])
    assert lineage.get_job(store, job_id)["finished_at"] is None
    lineage.update_job(store, job_id, status="succeeded", result_model="student.gguf")
    job = lineage.get_job(store, job_id)
    assert job["finished_at"] is not None and job["result_model"] == "student.gguf"
    lineage.add_promotion(store, model="student.gguf", route="support-bot", mode="canary",
                          share=0.1, job_id=job_id, eval_run_id="run1")
    (promotion,) = lineage.promotions(store, "support-bot")
    assert (promotion["job_id"], promotion["eval_run_id"], promotion["share"]) == \
        (job_id, "run1", 0.1)
    assert [j["id"] for j in lineage.list_jobs(store)] == [job_id]
    assert [s["id"] for s in lineage.list_sets(store)] == [newer, set_id]


def test_bad_values_and_unknown_ids_are_clear_errors(store):  # noqa: F811
    with pytest.raises(NotFound, match="keel distill jobs"):
        lineage.get_job(store, "no-such-job")
    with pytest.raises(NotFound, match="keel distill list"):
        lineage.get_set(store, "no-such-set")
    job_id = lineage.create_job(store, backend="openai", base_model="m", set_id=None)
    with pytest.raises(InvalidRequest, match="status"):
        lineage.update_job(store, job_id, status="exploded")
    with pytest.raises(InvalidRequest, match="unknown fields"):
        lineage.update_job(store, job_id, base_model="other")
    with pytest.raises(InvalidRequest, match="mode"):
        lineage.add_promotion(store, model="m", route="r", mode="everywhere")
