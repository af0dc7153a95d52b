"""Paged attention over an HF-style cache [B, Hk, max_len, D] shown as one block per row of any length (decode,
prefill, every device), against a plain fp32 reference; CUDA's rule for non-power-of-two blocks."""
import pytest
import torch

from infinilm_torch import ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def reference(q, k, v, lens, q_len, scale):
    """q [B, Hq, Sq, D], k/v [B, Hk, S, D]; query i of row b sees keys 0 .. lens[b] - q_len + i (fp32)."""
    b, hq, _, d = q.shape
    rep = hq // k.shape[1]
    k, v = k.float().repeat_interleave(rep, 1), v.float().repeat_interleave(rep, 1)
    s = torch.einsum("bhqd,bhkd->bhqk", q.float(), k) * scale
    j = torch.arange(k.shape[2]).view(1, 1, 1, -1)
    i = torch.arange(q_len).view(1, 1, -1, 1)
    keep = j <= lens.view(-1, 1, 1, 1).cpu() - q_len + i
    s = s.masked_fill(~keep.to(s.device), float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", s.softmax(-1), v)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("max_len", [37, 100, 129, 1000])
@pytest.mark.parametrize("q_len", [1, 5])
def test_row_blocks_any_length(device, dtype, max_len, q_len):
    torch.manual_seed(max_len * 10 + q_len)
    bsz, hq, hk, d = 3, 8, 2, 64
    k = torch.randn(bsz, hk, max_len, d, device=device, dtype=dtype)
    v = torch.randn(bsz, hk, max_len, d, device=device, dtype=dtype)
    q = torch.randn(bsz, hq, q_len, d, device=device, dtype=dtype)
    lens = torch.tensor([max_len, max(q_len, max_len // 2), q_len + 2], dtype=torch.int32, device=device)
    bt = torch.arange(bsz, dtype=torch.int32, device=device).view(bsz, 1)
    scale = d ** -0.5
    want = reference(q, k, v, lens, q_len, scale)
    if q_len == 1:
        got = ops.paged_attention_decode(q.reshape(bsz, hq, d), k, v, bt, lens, scale).view(bsz, hq, 1, d)
    else:
        qs = q.transpose(1, 2).reshape(bsz * q_len, hq, d)
        starts = torch.arange(0, (bsz + 1) * q_len, q_len, dtype=torch.int32, device=device)
        got = ops.paged_attention_prefill(qs, k, v, bt, starts, lens, scale).view(bsz, q_len, hq, d).transpose(1, 2)
    tol = TOL[dtype]
    torch.testing.assert_close(got.float(), want, atol=tol * want.abs().max().item(), rtol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_non_power_of_two_needs_one_block_per_row():
    k = torch.randn(4, 2, 37, 64, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(2, 8, 64, device="cuda", dtype=torch.bfloat16)
    bt = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device="cuda")
    lens = torch.tensor([40, 50], dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="power-of-two block_size"):
        ops.paged_attention_decode(q, k, k, bt, lens, 0.125)
