"""Process groups for tensor parallelism: the c10d backends the C++ engine's rank threads all-reduce through.

The torch wheel ships no Gloo headers, so C++ cannot build a ProcessGroupGloo; Python builds the backends and
the engine takes them as c10d::Backend (DESIGN.md, Tensor parallelism). InferEngine's constructor (lib/_engine.py) calls
`rank_backends` (in-process ranks) and `local_device_id` (multi-process mode); users call `init_from_env`
under torchrun. See docs/tensor_parallel.md.
"""
import datetime
import os
import threading

import torch
import torch.distributed as dist


def rank_backends(device_ids, device_type, timeout_s):
    """One backend per in-process rank over a shared HashStore: Gloo for "cpu", NCCL for "cuda".

    Each backend is constructed in its own thread because the constructors rendezvous through the store.
    """
    world = len(device_ids)
    store = dist.HashStore()
    timeout = datetime.timedelta(seconds=timeout_s)
    backends = [None] * world
    errors = [None] * world

    def build(rank):
        try:
            if device_type == "cuda":
                if not dist.is_nccl_available():
                    raise RuntimeError("tensor parallelism on CUDA needs torch with NCCL")
                torch.cuda.set_device(device_ids[rank])
                opts = dist.ProcessGroupNCCL.Options()
                opts._timeout = timeout
                backends[rank] = dist.ProcessGroupNCCL(store, rank, world, opts)
            else:
                if not dist.is_gloo_available():
                    raise RuntimeError("tensor parallelism on CPU needs torch with Gloo")
                backends[rank] = dist.ProcessGroupGloo(store, rank, world, timeout)
        except BaseException as e:  # noqa: BLE001  (re-raised on the caller's thread below)
            errors[rank] = e

    threads = [threading.Thread(target=build, args=(r,), name=f"infinilm-pg-{r}") for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 5.0)
    for rank, (b, e) in enumerate(zip(backends, errors)):
        if e is not None:
            raise RuntimeError(f"tensor parallelism: building the {device_type} backend of rank {rank} failed: {e}") from e
        if b is None:
            raise RuntimeError(f"tensor parallelism: building the {device_type} backend of rank {rank} timed out")
    return backends


def local_device_id(device_type):
    """This process's device in multi-process mode: LOCAL_RANK (set by torchrun) for CUDA, 0 for CPU."""
    if device_type != "cuda":
        return 0
    return int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))


def init_from_env(backend=None, timeout_s=300.0):
    """Initialise torch.distributed from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
    unless already done, and return the default group to pass as InferEngine(..., process_group=...).

    backend: "gloo" (CPU ranks) or "nccl" (CUDA ranks); default nccl when CUDA is available, else gloo.
    """
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s))
    return dist.group.WORLD
