"""Property-based fuzzing of every torch.ops.infinilm op and of engine Inputs, each property in its own process.

Every generated call must either match a plain-PyTorch fp32 reference (HF transformers for the engine) or raise
ValueError / TypeError / IndexError / RuntimeError whose message names an argument. A property runs in a child
interpreter with a timeout, so a crash or a hang fails its test instead of killing pytest; refused engine steps
must leave every request's cache as it was. The properties live in fuzz_ops.py and fuzz_engine.py; profiles in
conftest.py: "ci" (the default: derandomized, bounded) and "long" (`--hypothesis-profile=long`).
"""
import pytest
from hypothesis import settings

from fuzz_engine import ENGINE_PROPS
from fuzz_ops import OP_PROPS
from test_hardening import run_isolated

PROPS = {**OP_PROPS, **ENGINE_PROPS}


def test_every_op_has_a_property():
    import torch

    registered = {n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
                  if n.startswith("infinilm::")}
    assert len(registered) >= 9 and registered <= set(OP_PROPS), f"ops without a property: {registered - set(OP_PROPS)}"


@pytest.mark.parametrize("prop", sorted(PROPS))
def test_property(prop):
    profile = settings.get_current_profile_name()
    timeout = 3600 if profile == "long" else 600  # generous: CI boxes are shared
    module = "fuzz_ops" if prop in OP_PROPS else "fuzz_engine"
    run_isolated(f"""
        import conftest, {module} as m
        from hypothesis import settings
        settings.load_profile({profile!r})
        m.{'OP_PROPS' if prop in OP_PROPS else 'ENGINE_PROPS'}[{prop!r}]()
    """, timeout=timeout)
