"""Defects a hostile caller found (issue 13): op value checks on views, engines without weights, cache bookkeeping."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from engine_utils import Input, engine_config, make_engine, make_hf, paged_config
from infinilm_torch.lib import _infinilm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_isolated(code: str, timeout: float = 120) -> str:
    """Runs `code` in a fresh interpreter, so that a segfault or an abort fails the test instead of pytest."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    res = subprocess.run([sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=timeout, env=env, cwd=ROOT)
    assert res.returncode == 0, f"rc {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr[-4000:]}"
    return res.stdout


# ---- 1. value checks read logical values of views ---------------------------------------------------------------


def test_paged_attention_strided_int64_seq_lens():
    """A [::2] int64 view of seq_lens: good values give the reference result, bad ones a clear error."""
    out = run_isolated("""
        import torch, math
        from test_attention import make_case, reference
        from infinilm_torch import ops
        torch.manual_seed(0)
        for n in (2, 3, 17):
            reqs = [(1, int(s)) for s in torch.randint(1, 70, (n,))]
            case = make_case("cpu", torch.float32, reqs, 2, 2, 16, 8)
            view = torch.zeros(2 * n, dtype=torch.long)
            view[::2] = case["seq_lens"]
            view[1::2] = 10**9  # what the raw memory of the view holds between its elements
            case["seq_lens"] = view[::2]
            assert not case["seq_lens"].is_contiguous()
            args = {k: v for k, v in case.items() if k != "query_start_loc"}
            out = ops.paged_attention_decode(**args)
            torch.testing.assert_close(out, reference(**case), atol=2e-5, rtol=0)
            out = ops.paged_attention_prefill(**case)
            torch.testing.assert_close(out, reference(**case), atol=2e-5, rtol=0)
            # a bad value inside the view must be seen, the good raw memory between elements must not hide it
            bad = torch.zeros(2 * n, dtype=torch.long)
            bad[::2] = case["seq_lens"]
            bad[2 * (n - 1)] = 10**6
            for f, a in ((ops.paged_attention_decode, args), (ops.paged_attention_prefill, case)):
                try:
                    f(**dict(a, seq_lens=bad[::2]))
                except ValueError as e:
                    assert "seq_lens" in str(e), e
                else:
                    raise AssertionError("a seq_lens of 10**6 in a view was accepted")
        # a strided block_tables is refused by name (the kernel takes it dense)
        case = make_case("cpu", torch.float32, [(1, 9)], 2, 2, 16, 8)
        wide = torch.zeros(1, 2 * case["block_tables"].shape[1], dtype=torch.long)
        wide[:, ::2] = case["block_tables"]
        try:
            ops.paged_attention_decode(case["query"], case["key_cache"], case["value_cache"], wide[:, ::2],
                                       case["seq_lens"], 0.25)
        except ValueError as e:
            assert "block_tables" in str(e)
        else:
            raise AssertionError("strided block_tables accepted")
        print("ok")
    """)
    assert out.strip().endswith("ok")
