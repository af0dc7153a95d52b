"""The Python half of InferEngine's constructor: the defaults and process groups the C++ core does not build.

The compiled constructor takes resolved values only (a device type, c10d backends), so the engine core never
calls into Python. This wraps it as the spec's ``InferEngine(config, distributed_config, device_type,
cache_config)`` plus ``process_group`` and ``comm_timeout`` (docs/tensor_parallel.md).
"""
import torch


def _default_device_type():
    """The spec's default device: the adapter's current one (CPU when the adapter has none)."""
    from infinilm_torch import infinicore

    try:
        return infinicore.context.getDevice().getType()
    except Exception:  # noqa: BLE001  (an adapter without a current device: the engine's own default)
        return "cpu"


def install(lib) -> None:
    """Replace ``lib.InferEngine.__init__`` with the wrapper below (once)."""
    cls = lib.InferEngine
    if getattr(cls, "_raw_init", None) is not None:
        return
    raw_init = cls.__init__

    def __init__(self, config, distributed_config=None, device_type=None, cache_config=None, process_group=None,
                 comm_timeout=300.0):
        from infinilm_torch import distributed

        if device_type is None:
            device_type = _default_device_type()
        kind = lib._device_type_name(device_type)
        if isinstance(comm_timeout, bool) or not isinstance(comm_timeout, (int, float)) or not comm_timeout > 0:
            raise ValueError(f"InferEngine: 'comm_timeout' must be > 0 seconds, got {comm_timeout!r}")
        dist_given = distributed_config is not None
        dist = distributed_config if dist_given else lib.DistConfig()
        backends, owned = None, True
        if process_group is None:
            if dist.tp_size > 1:
                cls._check_args(config, dist, kind, dist.tp_size)
                backends = distributed.rank_backends(list(dist.tp_device_ids), kind, float(comm_timeout))
        else:
            if not (hasattr(process_group, "size") and hasattr(process_group, "rank")):
                raise ValueError("InferEngine: 'process_group' must be a torch.distributed ProcessGroup or Backend, "
                                 f"got {type(process_group)}")
            if dist_given:
                if dist.tp_size != 1:
                    raise ValueError("InferEngine: with 'process_group' each process runs one rank, so "
                                     f"'distributed_config' must list one device id, got {dist.tp_size}")
            else:
                dist = lib.DistConfig([distributed.local_device_id(kind)])
            cls._check_args(config, dist, kind, int(process_group.size()))
            backend = process_group
            if hasattr(process_group, "_get_backend"):  # a ProcessGroup: its backend for this device type
                backend = process_group._get_backend(torch.device(kind))
            backends, owned = [backend], False
        raw_init(self, config, dist, device_type, cache_config, backends, owned, float(comm_timeout))

    __init__.__doc__ = (
        "InferEngine(config, distributed_config=DistConfig(), device_type='cpu'|'cuda'|torch.device|Device.Type, "
        "cache_config=None -> StaticKVCacheConfig(1, max_position_embeddings), process_group=None, "
        "comm_timeout=300.0). DistConfig(tp_size > 1): one rank thread per device, Gloo (CPU) or NCCL (CUDA) "
        "groups built internally. process_group (a torch.distributed group, e.g. after init_process_group under "
        "torchrun): this process runs one rank of it; only group rank 0 returns output_ids (others get None). "
        "comm_timeout: seconds an all-reduce may wait for its peers before raising. See docs/tensor_parallel.md.")
    cls.__init__ = __init__
    cls._raw_init = raw_init
