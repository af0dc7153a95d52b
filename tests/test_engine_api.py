"""InferEngine API: configs, load_param/state_dict, reset_cache, hooks, sampling seeds, bad inputs."""
import pytest
import torch

from engine_utils import Input, PagedDriver, check_sequence, engine_config, make_engine, make_hf, paged_config, run_static
from infinilm_torch.lib import _infinilm


def test_config_fields_and_validate():
    c = _infinilm.LlamaConfig(vocab_size=300, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                              hidden_size=128, eos_token_id=7, dtype=torch.bfloat16)
    assert c.kv_dim() == 32 and c.eos_token_id == [7] and c.dtype == "bfloat16"
    c.validate()
    c.rope_scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192, "rope_theta": 5e5}
    assert c.rope_type == "llama3" and c.rope_theta == 5e5 and c.rope_scaling["factor"] == 8.0
    c.num_key_value_heads = 3
    with pytest.raises(ValueError, match="num_key_value_heads"):
        c.validate()
    with pytest.raises(ValueError, match="dtype"):
        c.dtype = "int8"
    assert _infinilm.DistConfig().tp_device_ids == [0]
    assert _infinilm.DistConfig(tp_size=3).tp_device_ids == [0, 1, 2]
    assert _infinilm.DistConfig(tp_device_ids=[2, 5]).tp_size == 2
    with pytest.raises(ValueError, match="twice"):
        _infinilm.DistConfig(tp_device_ids=[1, 1])
    s = _infinilm.StaticKVCacheConfig()
    assert s.max_batch_size() == 1 and s.max_cache_len() == 2**63 - 1
    p = _infinilm.PagedKVCacheConfig(1 << 20)
    assert p.block_size() == 16 and p.max_kv_memory_bytes() == 1 << 20
    assert isinstance(p, _infinilm.CacheConfig)


def test_cache_sizes_and_device_types():
    model = make_hf(layers=2, heads=4, kv_heads=2)
    cfg = engine_config(model.config, torch.float32)
    e = _infinilm.InferEngine(cfg)  # default static cache: one row of max_position_embeddings
    assert not e.is_paged and e.max_batch_size == 1 and e.max_cache_len == cfg.max_position_embeddings
    per_block = 2 * 16 * 2 * 16 * 2 * 4
    e = _infinilm.InferEngine(cfg, _infinilm.DistConfig(), torch.device("cpu"),
                              _infinilm.PagedKVCacheConfig(7 * per_block + 5, 16))
    assert e.num_blocks == 7
    with pytest.raises(ValueError, match="max_kv_memory_bytes"):
        _infinilm.InferEngine(cfg, device_type="cpu", cache_config=_infinilm.PagedKVCacheConfig(per_block - 1))

    class Type:  # the adapter's Device.Type enum member
        name = "CPU"

    class Wrapped:
        _underlying = torch.device("cpu")

    for dt in ("cpu", Type(), Wrapped()):
        assert _infinilm.InferEngine(cfg, device_type=dt).device == "cpu"
    with pytest.raises(ValueError, match="device_type"):
        _infinilm.InferEngine(cfg, device_type="cambricon")
    # Tensor parallelism builds its own Gloo groups (tests/test_tp.py covers it).
    assert _infinilm.InferEngine(cfg, _infinilm.DistConfig(2), "cpu").tp_size == 2


@pytest.mark.parametrize("tied", [False, True])
def test_load_param_state_dict_round_trip(tied):
    model = make_hf(heads=4, kv_heads=2, tied=tied, bias=True)
    engine = make_engine(model, torch.bfloat16)
    (sd,) = engine.state_dict()
    ref = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert list(sd) == list(ref)
    for k, v in ref.items():
        assert sd[k].dtype == torch.bfloat16 and torch.equal(sd[k], v.to(torch.bfloat16)), k
    with pytest.raises(ValueError, match="model.layers.9.mlp.up_proj.weight"):
        engine.load_param("model.layers.9.mlp.up_proj.weight", ref["model.layers.0.mlp.up_proj.weight"])
    with pytest.raises(ValueError, match=r"\[64, 64\].*\[32, 64\]"):
        engine.load_param("model.layers.0.self_attn.k_proj.weight", torch.zeros(64, 64))


def test_reset_cache_and_reconfigure():
    model = make_hf()
    engine = make_engine(model, cache_config=_infinilm.StaticKVCacheConfig(2, 64))
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (6, 3)]
    a, la = run_static(engine, prompts, 8)
    engine.reset_cache()
    b, lb = run_static(engine, prompts, 8)
    assert a == b and all(torch.equal(x, y) for r, s in zip(la, lb) for x, y in zip(r, s))
    engine.reset_cache(paged_config(model, 12, 32))
    assert engine.is_paged and engine.num_blocks == 12 and engine.block_size == 32
    d = PagedDriver(engine, [prompts[0]], 12, 32)
    d.step([(0, 6)])
    for _ in range(8):
        d.step([(0, 1)])
    assert d.reqs[0]["tokens"] == a[0]
    with pytest.raises(TypeError):
        engine.reset_cache(42)
    with pytest.raises(ValueError, match="max_kv_memory_bytes"):
        engine.reset_cache(_infinilm.PagedKVCacheConfig(10))
    assert engine.num_blocks == 12  # the failed reset left the cache as it was


def test_seeded_sampling_is_reproducible():
    model = make_hf()
    engine = make_engine(model)
    prompt = [torch.randint(0, 256, (5,)).tolist()]
    runs = []
    for seed in (11, 11, 12):
        engine.reset_cache()
        runs.append(run_static(engine, prompt, 12, temperature=1.0, top_k=50, top_p=0.9, seed=seed)[0])
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_hooks_names_shapes_layers(capfd):
    model = make_hf(layers=2, heads=4, kv_heads=2, hidden=64, inter=96)
    engine = make_engine(model)
    seen = []
    reg = _infinilm.HookRegistry()
    assert not reg.has_hooks()
    reg.register_hook("embed_tokens", lambda n, t, i: seen.append((n, tuple(t.shape), i, t)))
    reg.register_hook("layer1_*", lambda n, t, i: seen.append((n, tuple(t.shape), i, None)))
    reg.register_hook("layer1_mlp", lambda n, t, i: seen.append(("exact:" + n, tuple(t.shape), i, None)))
    reg.register_hook("logits", lambda n, t, i: seen.append((n, tuple(t.shape), i, t)))
    reg.register_hook("layer0_attention_q", lambda n, t, i: 1 / 0)  # logged, forward goes on
    assert reg.has_hooks()
    engine.set_hook_registry(reg)
    prompt = torch.randint(0, 256, (6,)).tolist()
    out = engine.forward(Input(input_ids=torch.tensor([prompt]), temperature=0.0, return_logits=True))
    assert "layer0_attention_q" in capfd.readouterr().err
    names = [s[0] for s in seen]
    T, H, D = 6, 64, 16
    want = [("embed_tokens", (T, H)), ("layer1_attention_q", (T, 4, D)), ("layer1_attention_k", (T, 2, D)),
            ("layer1_attention_v", (T, 2, D)), ("layer1_attention_q_rope", (T, 4, D)),
            ("layer1_attention_k_rope", (T, 2, D)), ("layer1_attention_output", (T, 4 * D)),
            ("layer1_attention", (T, H)), ("layer1_mlp_gate_up", (T, 192)), ("layer1_mlp_intermediate", (T, 96)),
            ("exact:layer1_mlp", (T, H)), ("layer1_output", (T, H)), ("logits", (1, 256))]
    assert [(s[0], s[1]) for s in seen] == want, names
    assert [s[2] for s in seen] == [-1] + [1] * 11 + [-1]
    torch.testing.assert_close(seen[0][3], model.model.embed_tokens.weight[prompt])
    torch.testing.assert_close(seen[-1][3], out.logits)
    reg.clear()
    assert not reg.has_hooks()
    engine.reset_cache()
    engine.forward(Input(input_ids=torch.tensor([prompt])))
    assert len(seen) == len(want)


def test_bad_inputs_raise_and_leave_cache_intact():
    model = make_hf(heads=4, kv_heads=2)
    nb, bs = 24, 16
    engine = make_engine(model, cache_config=paged_config(model, nb, bs))
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (19, 8)]
    d = PagedDriver(engine, prompts, nb, bs)
    d.step([(0, 19), (1, 8)])
    good = d.build([(0, 1), (1, 1)])
    other_slot = d.reqs[1]["blocks"][0] * bs  # request 1's first cached token

    def bad(match, exc=(ValueError, IndexError), **change):
        args = {k: v.clone() for k, v in good.items()}
        for k, f in change.items():
            args[k] = f(args[k])
        with pytest.raises(exc, match=match):
            engine.forward(Input(temperature=0.0, **args))

    bad("slot_mapping", slot_mapping=lambda s: torch.tensor([other_slot, s[1]]))
    bad("slot_mapping", slot_mapping=lambda s: torch.tensor([nb * bs + 3, s[1]]))
    bad("block_tables", block_tables=lambda b: b.index_fill_(1, torch.tensor([0]), nb + 5))
    bad("input_lengths", input_lengths=lambda x: torch.tensor([2, 1]))
    bad("cache_lengths", cache_lengths=lambda c: torch.tensor([-1, 8]))
    bad("needs .* cache tokens", cache_lengths=lambda c: torch.tensor([1000, 8]))
    bad("input_ids", input_ids=lambda i: torch.tensor([[256, 3]]))
    bad("position_ids", position_ids=lambda p: torch.tensor([10**6, 8]))
    bad("int64 or int32", exc=TypeError, slot_mapping=lambda s: s.float())
    with pytest.raises(ValueError, match="top_p"):
        engine.forward(Input(temperature=1.0, top_p=1.5, **good))
    with pytest.raises(ValueError, match="block_tables"):
        engine.forward(Input(input_ids=torch.tensor([[1, 2]])))
    for _ in range(6):
        d.step([(0, 1), (1, 1)])
    for q in d.reqs:
        check_sequence(model, q["prompt"], q["tokens"], q["logits"], min_distinct=1)
    static = make_engine(model, cache_config=_infinilm.StaticKVCacheConfig(2, 32))
    with pytest.raises(ValueError, match="max_batch_size = 2"):
        static.forward(Input(input_ids=torch.zeros(3, 4, dtype=torch.long)))
    with pytest.raises(ValueError, match="max_cache_len"):
        static.forward(Input(input_ids=torch.zeros(1, 4, dtype=torch.long), cache_lengths=torch.tensor([30])))


def test_engine_cuda_graphs_switch_is_a_noop_on_cpu():
    engine = make_engine(make_hf(layers=1, heads=4, kv_heads=2, hidden=64, inter=96))
    assert not engine.cuda_graphs
    engine.enable_cuda_graphs(True)  # graphs need CUDA: CPU steps stay eager
    assert not engine.cuda_graphs and engine._num_cuda_graphs == 0
    out = engine.forward(Input(input_ids=torch.tensor([[1, 2, 3]]), temperature=0.0))
    engine.forward(Input(input_ids=out.output_ids, cache_lengths=torch.tensor([3]), temperature=0.0))
    assert engine._cuda_graph_replays == 0
