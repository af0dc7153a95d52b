"""Bad input to the elementwise ops raises a clear exception naming the argument, before anything is written."""
import pytest
import torch

from infinilm_torch import ops


def test_rms_norm_bad_input(device):
    x = torch.randn(4, 16, device=device)
    with pytest.raises(ValueError, match="'weight' has 8 elements"):
        ops.rms_norm(x, torch.ones(8, device=device), 1e-6)
    with pytest.raises(TypeError, match="'input' must be float32, float16 or bfloat16"):
        ops.rms_norm(x.long(), torch.ones(16, device=device), 1e-6)
    with pytest.raises(ValueError, match="'eps' must be >= 0"):
        ops.rms_norm(x, torch.ones(16, device=device), -1.0)


def test_fused_add_rms_norm_bad_input(device):
    x, r = torch.randn(4, 16, device=device), torch.randn(4, 16, device=device, dtype=torch.float16)
    r0 = r.clone()
    with pytest.raises(TypeError, match="'input'.*'residual'.*same dtype"):
        ops.fused_add_rms_norm(x, r, torch.ones(16, device=device), 1e-6)
    torch.testing.assert_close(r, r0)
    with pytest.raises(ValueError, match="same shape"):
        ops.fused_add_rms_norm(x, torch.randn(3, 16, device=device), torch.ones(16, device=device), 1e-6)


def test_rotary_bad_input(device):
    table = ops.rope_cos_sin_cache(32, 64, 10000.0).to(device)
    q, k = torch.randn(5, 4, 64, device=device), torch.randn(5, 2, 64, device=device)
    with pytest.raises(ValueError, match="head_dim mismatch"):
        ops.rotary_embedding(torch.arange(5, device=device), q, torch.randn(5, 2, 32, device=device), table, True)
    with pytest.raises(ValueError, match="'positions' has 4 elements"):
        ops.rotary_embedding(torch.arange(4, device=device), q, k, table, True)
    with pytest.raises(TypeError, match="'positions' must be int32 or int64"):
        ops.rotary_embedding(torch.arange(5, device=device).float(), q, k, table, True)
    with pytest.raises(ValueError, match="rotary dim 96"):
        ops.rotary_embedding(torch.arange(5, device=device), q, k,
                             ops.rope_cos_sin_cache(32, 96, 1e4).to(device), True)
    with pytest.raises(ValueError, match="'rope_type' must be"):
        ops.rope_cos_sin_cache(32, 64, 1e4, "yarn")
    if device == "cpu":  # value checks need host data
        q0 = q.clone()
        with pytest.raises(IndexError, match=r"'positions' must lie in \[0, 32\).*\[0, 40\]"):
            ops.rotary_embedding(torch.tensor([0, 1, 2, 3, 40]), q, k, table, True)
        torch.testing.assert_close(q, q0)


def test_silu_and_mul_bad_input(device):
    with pytest.raises(ValueError, match="last dimension must be even"):
        ops.silu_and_mul(torch.randn(3, 7, device=device))


def test_reshape_and_cache_bad_input(device):
    kc = torch.randn(4, 2, 16, 64, device=device)
    vc = torch.randn_like(kc)
    k, v = torch.randn(3, 2, 64, device=device), torch.randn(3, 2, 64, device=device)
    with pytest.raises(ValueError, match="does not match 'key_cache'"):
        ops.reshape_and_cache(torch.randn(3, 2, 32, device=device), torch.randn(3, 2, 32, device=device), kc, vc,
                              torch.arange(3, device=device))
    with pytest.raises(ValueError, match="'slot_mapping' has 2 entries"):
        ops.reshape_and_cache(k, v, kc, vc, torch.arange(2, device=device))
    with pytest.raises(TypeError, match="'key_cache'"):
        ops.reshape_and_cache(k, v, kc.half(), vc.half(), torch.arange(3, device=device))
    if device == "cpu":
        kc0 = kc.clone()
        with pytest.raises(IndexError, match=r"'slot_mapping' values must be -1 or in \[0, 64\).*\[-1, 64\]"):
            ops.reshape_and_cache(k, v, kc, vc, torch.tensor([-1, 5, 64]))
        torch.testing.assert_close(kc, kc0)  # nothing written
