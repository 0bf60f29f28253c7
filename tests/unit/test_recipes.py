"""Cluster recipes are frozen dataclasses, one per kind, checked as the specs are."""

from __future__ import annotations

import dataclasses

import pytest

from rsembed_dask.cluster.recipes import RECIPES, KubernetesRecipe, LocalRecipe, SlurmRecipe
from rsembed_dask.errors import SpecError


def test_one_dataclass_per_kind_with_defaults():
    assert set(RECIPES) == {"local", "slurm", "kubernetes"}
    local = LocalRecipe(source="r.yaml")
    assert (local.kind, local.fetch_workers, local.embed_workers, local.host) == ("local", 1, None, "127.0.0.1")
    assert dict(local.options) == {"embed_workers": None, "fetch_workers": 1, "fetch_worker_threads": 4,
                                   "memory_limit": "auto", "dashboard_address": ":8787", "host": "127.0.0.1"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        local.fetch_workers = 2  # type: ignore[misc]


@pytest.mark.parametrize("cls, key, value", [(LocalRecipe, "fetch_workers", -1), (LocalRecipe, "embed_workers", True),
                                             (LocalRecipe, "host", ""), (KubernetesRecipe, "wait_timeout_s", 0)])
def test_bad_value_names_the_file_and_key(cls, key, value):
    extra = {"manifest": "m.yaml"} if cls is KubernetesRecipe else {}
    with pytest.raises(SpecError) as err:
        cls(source="r.yaml", **extra, **{key: value})
    assert err.value.field == f"r.yaml: rsembed_dask_cluster.{key}" and err.value.value == value


def test_from_mapping_refuses_unknown_and_missing_keys():
    with pytest.raises(SpecError, match="a key of kind 'local': dashboard_address, embed_workers"):
        LocalRecipe.from_mapping({"gpus": 2}, "r.yaml")
    with pytest.raises(SpecError, match=r"required for kind 'slurm'") as err:
        SlurmRecipe.from_mapping({"embed_job": {}}, "r.yaml")
    assert err.value.field == "r.yaml: rsembed_dask_cluster.embed_jobs"


def test_nested_mappings_are_read_only_copies():
    job = {"cores": 2, "memory": "8GB", "worker_extra_args": ["--resources", "GPU=1"]}
    recipe = SlurmRecipe.from_mapping({"embed_jobs": 1, "embed_job": job, "fetch_jobs": 0}, "r.yaml")
    job["cores"] = 99
    assert recipe.embed_job["cores"] == 2
    with pytest.raises(TypeError):
        recipe.embed_job["cores"] = 3  # type: ignore[index]
