"""Eval datasets in the store: each (name, content hash) is one immutable version.

    import_dataset(store, name, samples, source)  -> (name, version, created)
    get_dataset(store, name, version=None)        -> (meta, samples); latest when no version
    list_datasets(store)                          -> one row per name, its latest version
    dataset_versions(store, name)                 -> every version, newest first

Importing content that is already stored creates nothing and returns the existing version, so
a runner can import what it is about to run on every time and record the version it got.
"Latest" is the version imported first most recently; re-importing an older content does not
make it latest again (name the version to run on it).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from keel.errors import InvalidRequest, NotFound
from keel.evals.base import Sample
from keel.evals.datasets import dataset_version, with_unique_ids
from keel.store.models import eval_datasets, eval_samples

if TYPE_CHECKING:
    from keel.store import Store

_META_COLUMNS = [eval_datasets.c[n] for n in
                 ("id", "name", "version", "created_at", "sample_count", "source")]


class DatasetNotFound(NotFound):
    code = "dataset_not_found"


def import_dataset(
    store: Store, name: str, samples: list[Sample], source: str | None = None
) -> tuple[str, str, bool]:
    """Store `samples` as a version of dataset `name`; `created` is False if it was there."""
    _check_name(name)
    if not samples:
        raise InvalidRequest(f"dataset {name!r}: no samples")
    samples = with_unique_ids(list(samples))
    version = dataset_version(samples)
    if _find(store, name, version) is not None:
        return name, version, False
    try:
        with store.engine.begin() as conn:
            dataset_id = conn.execute(eval_datasets.insert().values(
                name=name, version=version, created_at=time.time(),
                sample_count=len(samples), source=(source or "")[:1000] or None,
            )).inserted_primary_key[0]
            conn.execute(eval_samples.insert(), [
                _sample_row(dataset_id, ordinal, sample)
                for ordinal, sample in enumerate(samples)
            ])
    except sa.exc.IntegrityError:
        # Another process stored the same content between our look and our insert.
        if _find(store, name, version) is None:
            raise
        return name, version, False
    return name, version, True


def get_dataset(
    store: Store, name: str, version: str | None = None
) -> tuple[dict[str, Any], list[Sample]]:
    """A dataset version's metadata and its samples in order; `version` may be a prefix."""
    meta = _resolve(store, name, version)
    query = (sa.select(eval_samples).where(eval_samples.c.dataset_id == meta["id"])
             .order_by(eval_samples.c.ordinal))
    with store.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return meta, [_sample(row) for row in rows]


def list_datasets(store: Store) -> list[dict[str, Any]]:
    """Each dataset name once, with its latest version and how many versions it has."""
    rows = _all_versions(store)
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:  # newest first, so the first row seen for a name is its latest
        if row["name"] not in latest:
            latest[row["name"]] = {**row, "versions": 0}
        latest[row["name"]]["versions"] += 1
    return sorted(latest.values(), key=lambda r: r["name"])


def dataset_versions(store: Store, name: str) -> list[dict[str, Any]]:
    """Every version of `name`, newest first."""
    rows = _all_versions(store, name)
    if not rows:
        raise DatasetNotFound(f"no dataset {name!r}")
    return rows


# -- helpers ---------------------------------------------------------------------------------


def _resolve(store: Store, name: str, version: str | None) -> dict[str, Any]:
    rows = _all_versions(store, name)
    if not rows:
        raise DatasetNotFound(f"no dataset {name!r}")
    if version is None:
        return rows[0]
    matches = [r for r in rows if r["version"].startswith(version.strip())]
    if not matches or not version.strip():
        raise DatasetNotFound(f"dataset {name!r} has no version {version!r}")
    if len(matches) > 1:
        raise InvalidRequest(f"version prefix {version!r} of {name!r} is ambiguous",
                             param="version")
    return matches[0]


def _find(store: Store, name: str, version: str) -> dict[str, Any] | None:
    query = sa.select(*_META_COLUMNS).where(
        eval_datasets.c.name == name, eval_datasets.c.version == version)
    with store.engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return _plain(row) if row is not None else None


def _all_versions(store: Store, name: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(*_META_COLUMNS).order_by(
        eval_datasets.c.created_at.desc(), eval_datasets.c.id.desc())
    if name is not None:
        query = query.where(eval_datasets.c.name == name)
    with store.engine.connect() as conn:
        return [_plain(row) for row in conn.execute(query).mappings().all()]


def _sample_row(dataset_id: int, ordinal: int, sample: Sample) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "sample_id": sample.id,
        "ordinal": ordinal,
        "input": sample.input,
        "ideal": sample.ideal,
        "context": sample.context,
        "metadata": sample.metadata or None,
    }


def _sample(row) -> Sample:
    return Sample(id=row["sample_id"], input=row["input"], ideal=row["ideal"],
                  context=row["context"], metadata=row["metadata"] or {})


def _plain(row) -> dict[str, Any]:
    return {str(key): value for key, value in row.items()}


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidRequest("dataset name: expected 1 to 200 characters", param="name")
