"""Shared test fixtures: devices to run on, per-dtype tolerances, fresh random seeds."""
import os
import random

import pytest
import torch
from hypothesis import HealthCheck, settings

import infinilm_torch  # noqa: F401  (registers torch.ops.infinilm)

# Property tests (tests/test_fuzz.py): "ci" is bounded and derandomized (the same examples every run);
# "long" (`--hypothesis-profile=long`) explores fresh examples for deeper runs.
_HYPOTHESIS = dict(deadline=None, database=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=200, derandomize=True, **_HYPOTHESIS)
settings.register_profile("long", max_examples=3000, **_HYPOTHESIS)
settings.load_profile("ci")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (atol, rtol) for elementwise ops versus an fp32 reference.
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 1.6e-2),
}


def _devices():
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    return devs


DEVICES = _devices()


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames and not any(m.name == "parametrize" and "device" in m.args[0]
                                                     for m in metafunc.definition.iter_markers()):
        metafunc.parametrize("device", DEVICES)


@pytest.fixture(autouse=True)
def _fresh_seed():
    """A fresh seed per test (printed on failure), so inputs differ run to run but failures reproduce."""
    seed = int(os.environ.get("INFINILM_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(seed)
    random.seed(seed)
    yield seed


def pytest_runtest_makereport(item, call):
    if call.when == "call" and call.excinfo is not None:
        seed = item.funcargs.get("_fresh_seed")
        if seed is not None:
            item.add_report_section("call", "seed", f"INFINILM_TEST_SEED={seed}")


def tol(dtype):
    return TOL[dtype]


def assert_close(out, ref, dtype, scale=1.0):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol * scale, rtol=rtol * scale)
