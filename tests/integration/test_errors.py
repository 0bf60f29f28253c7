"""Every project error survives pickling (Dask workers send them to the client)."""

import copy
import os
import pickle

import numpy as np
import pytest
from distributed import Client

from rsembed_dask import errors
from rsembed_dask.campaign.actors import start_actor
from rsembed_dask.errors import QuotaError, RsEmbedError, SpecError
from rsembed_dask.embed.preprocess import check_chw
from rsembed_dask.specs import ModelSpec, OutputSpec

#: Constructor arguments per class; classes not listed are built from a message alone.
ARGS = {
    SpecError: ("PointBuffer.lat", 95.5, "a finite number in [-90, 90]"),
    QuotaError: ("429 Too Many Requests from earthengine", 7.5),
}


def all_error_classes():
    return sorted((c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, RsEmbedError)),
                  key=lambda c: c.__name__)


def build(cls):
    return cls(*ARGS.get(cls, (f"{cls.__name__}: something failed (expected x, given y)",)))


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_every_error_round_trips_through_pickle(cls, protocol):
    err = build(cls)
    back = pickle.loads(pickle.dumps(err, protocol=protocol))
    assert type(back) is cls
    assert str(back) == str(err) and back.args == err.args
    assert vars(back) == vars(err)
    assert str(copy.deepcopy(err)) == str(err)


def test_spec_and_quota_attributes_survive():
    spec = pickle.loads(pickle.dumps(SpecError("ModelSpec.image_size", 100, "a multiple of 16")))
    assert (spec.field, spec.value, spec.allowed) == ("ModelSpec.image_size", 100, "a multiple of 16")
    assert str(spec) == "ModelSpec.image_size=100 is invalid: expected a multiple of 16"
    assert isinstance(spec, ValueError)
    quota = pickle.loads(pickle.dumps(QuotaError("quota exceeded", retry_after=3.0)))
    assert quota.retry_after == 3.0 and str(quota) == "quota exceeded"
    assert isinstance(quota, errors.TransientProviderError)
    assert pickle.loads(pickle.dumps(QuotaError("no header"))).retry_after is None


def test_unpicklable_value_is_kept_as_its_repr():
    value = lambda x: x  # noqa: E731 - a lambda does not pickle
    err = SpecError("model", value, "a ModelSpec")
    err.add_note("while embedding sample 3")
    back = pickle.loads(pickle.dumps(err))
    assert back.value == repr(value) and back.field == "model" and str(back) == str(err)
    assert back.__notes__ == ["while embedding sample 3"]


def test_spec_error_raised_on_a_dask_worker_process_reaches_the_client():
    """Through a task and through an actor method (which distributed serialises without tblib's
    fallback: before ``__reduce__`` this died in the client with a TypeError from ``__init__``)."""
    bad = np.zeros((4, 8, 8), np.uint16)
    with Client(processes=True, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        worker = next(iter(client.scheduler_info()["workers"]))
        assert next(iter(client.run(os.getpid).values())) != os.getpid()  # a separate process
        # The actor first: a failed task makes the worker register tblib's reducer for SpecError.
        actor = start_actor(client, ModelSpec("test-tiny", image_size=32, device="cpu"), worker)
        with pytest.raises(SpecError) as from_actor:
            actor.embed([bad], 10.0, output=OutputSpec.pooled()).result(timeout=60)
        fut = client.submit(check_chw, bad, field="input_chw[7]", pure=False)
        with pytest.raises(SpecError) as from_task:
            fut.result(timeout=60)
    for info, field in [(from_task, "input_chw[7]"), (from_actor, "input_chw[0]")]:
        err = info.value
        assert type(err) is SpecError and err.field == field
        assert f"{field}=" in str(err) and "(3, H, W)" in str(err)
        assert err.allowed.startswith("a (3, H, W) array") and err.value == "<ndarray shape=(4, 8, 8) dtype=uint16>"
