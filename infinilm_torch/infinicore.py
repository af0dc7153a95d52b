"""InfiniCore-style Python surface over torch: devices, dtypes, a thin Tensor wrapper and a device context.

The spec's usage example (SEED_API.md section 4) is written against InfiniCore's Python API; this module
gives the same names on top of PyTorch, so that example runs with only its import lines renamed:

    device = infinicore.device("nvidia", 0)          # device._underlying == torch.device("cuda", 0)
    ids = infinicore.from_list([[1, 2, 3]], dtype=infinicore.int64)
    engine.load_param(name, tensor._underlying)      # ._underlying is the torch.Tensor

dtypes are torch dtypes themselves (``infinicore.bfloat16 is torch.bfloat16``).
"""
from __future__ import annotations

import enum
from typing import Any, Optional, Sequence, Union

import torch

__all__ = [
    "Device", "device", "Tensor", "from_list", "from_torch", "empty", "zeros", "ones", "context",
    "float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool_",
    "half", "double", "long",
]


class _DeviceType(str, enum.Enum):
    """Device kinds of InfiniCore. Each member is also the torch device-type string it runs as, so it can be
    passed wherever "cpu"/"cuda" is accepted (``Device.Type.NVIDIA == "cuda"``)."""

    def __new__(cls, code: int, torch_type: str, aliases: tuple):
        obj = str.__new__(cls, torch_type)
        obj._value_ = code
        obj.torch_type = torch_type
        obj.aliases = aliases
        return obj

    # CUDA-compatible stacks (Iluvatar CoreX, MetaX MACA, Hygon DTK/ROCm) present themselves to torch as "cuda".
    CPU = (0, "cpu", ("cpu",))
    NVIDIA = (1, "cuda", ("nvidia", "cuda", "gpu"))
    CAMBRICON = (2, "mlu", ("cambricon", "mlu"))
    ASCEND = (3, "npu", ("ascend", "npu"))
    METAX = (4, "cuda", ("metax", "maca"))
    MOORE = (5, "musa", ("moore", "musa"))
    ILUVATAR = (6, "cuda", ("iluvatar", "corex"))
    KUNLUN = (7, "xpu", ("kunlun", "xpu"))
    HYGON = (8, "cuda", ("hygon", "dcu", "hip", "rocm"))

    def __eq__(self, other):
        if isinstance(other, _DeviceType):
            return self is other
        return str.__eq__(self, other)

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = enum.Enum.__hash__

    def __repr__(self) -> str:
        return f"Device.Type.{self.name}"

    def __str__(self) -> str:
        return self.torch_type

    __format__ = str.__format__

    @classmethod
    def parse(cls, name: Union[str, "_DeviceType"]) -> "_DeviceType":
        """"cpu", "nvidia", "cuda", "ascend", ... (case-insensitive) -> Device.Type."""
        if isinstance(name, _DeviceType):
            return name
        if not isinstance(name, str):
            raise TypeError(f"device type must be a string or Device.Type, got {type(name).__name__}")
        key = name.strip().lower()
        for member in cls:
            if key == member.name.lower() or key in member.aliases:
                return member
        known = sorted({a for m in cls for a in m.aliases})
        raise ValueError(f"unknown device type {name!r}; expected one of {known}")


class Device:
    """A device: a kind (``Device.Type``) and an index. ``._underlying`` is the matching ``torch.device``."""

    Type = _DeviceType

    def __init__(self, type: Union[str, _DeviceType, "Device", torch.device] = "cpu", index: Optional[int] = None):
        if isinstance(type, Device):
            type, index = type._type, type._index if index is None else index
        elif isinstance(type, torch.device):
            type, index = type.type, type.index if index is None else index
        elif isinstance(type, str) and ":" in type and not isinstance(type, _DeviceType):
            type, _, idx = type.partition(":")
            index = int(idx) if index is None else index
        self._type = _DeviceType.parse(type)
        self._index = 0 if index is None else int(index)
        if self._index < 0:
            raise ValueError(f"device index must be >= 0, got {self._index}")

    @property
    def type(self) -> str:
        """The torch device-type string ("cpu", "cuda", ...)."""
        return self._type.torch_type

    @property
    def index(self) -> int:
        return self._index

    def getType(self) -> _DeviceType:
        return self._type

    def getIndex(self) -> int:
        return self._index

    @property
    def _underlying(self) -> torch.device:
        if self._type is _DeviceType.CPU:
            return torch.device("cpu")
        try:
            return torch.device(self._type.torch_type, self._index)
        except RuntimeError as e:
            raise RuntimeError(
                f"device {self._type.name} (torch type {self._type.torch_type!r}) is not available in this PyTorch build"
            ) from e

    def __eq__(self, other) -> bool:
        if not isinstance(other, Device):
            try:
                other = Device(other)
            except (TypeError, ValueError):
                return NotImplemented
        return self._type is other._type and self._index == other._index

    def __hash__(self) -> int:
        return hash((self._type.name, self._index))

    def __repr__(self) -> str:
        return f"device(type={self._type.name.lower()!r}, index={self._index})"


def device(type: Union[str, _DeviceType, Device, torch.device] = "cpu", index: Optional[int] = None) -> Device:
    """``infinicore.device("nvidia", 0)``; also accepts "cuda:1", a Device.Type or a torch.device."""
    return Device(type, index)


def _torch_device(dev) -> Optional[torch.device]:
    if dev is None:
        return None
    if isinstance(dev, Device):
        return dev._underlying
    if isinstance(dev, torch.device):
        return dev
    return Device(dev)._underlying


def _torch_dtype(dtype) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if hasattr(dtype, "_underlying"):
        return dtype._underlying
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            return value
    raise TypeError(f"not a dtype: {dtype!r}")


# dtypes: the torch ones, under InfiniCore's names.
float32 = torch.float32
float16 = half = torch.float16
bfloat16 = torch.bfloat16
float64 = double = torch.float64
int64 = long = torch.int64
int32 = torch.int32
int16 = torch.int16
int8 = torch.int8
uint8 = torch.uint8
bool_ = torch.bool


class Tensor:
    """A tensor of this adapter: ``._underlying`` is the torch.Tensor (shared, never copied on wrap)."""

    __slots__ = ("_underlying",)

    def __init__(self, underlying: torch.Tensor):
        if isinstance(underlying, Tensor):
            underlying = underlying._underlying
        if not isinstance(underlying, torch.Tensor):
            raise TypeError(f"Tensor wraps a torch.Tensor, got {type(underlying).__name__}")
        self._underlying = underlying

    @property
    def shape(self) -> list:
        return list(self._underlying.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self._underlying.dtype

    @property
    def device(self) -> Device:
        return Device(self._underlying.device)

    @property
    def ndim(self) -> int:
        return self._underlying.dim()

    def size(self, dim: Optional[int] = None):
        return self.shape if dim is None else self._underlying.size(dim)

    def stride(self, dim: Optional[int] = None):
        return list(self._underlying.stride()) if dim is None else self._underlying.stride(dim)

    def numel(self) -> int:
        return self._underlying.numel()

    def is_contiguous(self) -> bool:
        return self._underlying.is_contiguous()

    def contiguous(self) -> "Tensor":
        return Tensor(self._underlying.contiguous())

    def to(self, *args, **kwargs) -> "Tensor":
        """``to(device)``, ``to(dtype)`` or both; devices may be adapter devices or names like "nvidia"."""
        conv = []
        for a in args:
            if isinstance(a, (torch.dtype, torch.Tensor)):
                conv.append(a)
            elif isinstance(a, (Device, _DeviceType, str, torch.device)):
                conv.append(_torch_device(a))
            else:
                conv.append(_torch_dtype(a))
        if "device" in kwargs:
            kwargs["device"] = _torch_device(kwargs["device"])
        if "dtype" in kwargs:
            kwargs["dtype"] = _torch_dtype(kwargs["dtype"])
        return Tensor(self._underlying.to(*conv, **kwargs))

    def copy_(self, other) -> "Tensor":
        self._underlying.copy_(other._underlying if isinstance(other, Tensor) else other)
        return self

    def view(self, *shape) -> "Tensor":
        return Tensor(self._underlying.view(*shape))

    def permute(self, *dims) -> "Tensor":
        return Tensor(self._underlying.permute(*dims))

    def narrow(self, dim: int, start: int, length: int) -> "Tensor":
        return Tensor(self._underlying.narrow(dim, start, length))

    def tolist(self) -> list:
        return self._underlying.tolist()

    def torch(self) -> torch.Tensor:
        return self._underlying

    def __getitem__(self, idx) -> "Tensor":
        return Tensor(self._underlying[idx])

    def __len__(self) -> int:
        return len(self._underlying)

    def __repr__(self) -> str:
        return f"infinicore.Tensor(shape={self.shape}, dtype={self.dtype}, device={self.device})"


def from_torch(t: torch.Tensor) -> Tensor:
    """Wrap a torch.Tensor without copying."""
    return Tensor(t)


def from_list(data: Sequence[Any], dtype=None, device=None) -> Tensor:
    """A new tensor from (nested) Python lists, on ``device`` (default: the context's device)."""
    dev = _torch_device(device) if device is not None else context.getDevice()._underlying
    return Tensor(torch.tensor(data, dtype=_torch_dtype(dtype), device=dev))


def _factory(fn, shape, dtype, device) -> Tensor:
    dev = _torch_device(device) if device is not None else context.getDevice()._underlying
    return Tensor(fn(tuple(shape), dtype=_torch_dtype(dtype) or torch.float32, device=dev))


def empty(shape: Sequence[int], dtype=None, device=None) -> Tensor:
    return _factory(torch.empty, shape, dtype, device)


def zeros(shape: Sequence[int], dtype=None, device=None) -> Tensor:
    return _factory(torch.zeros, shape, dtype, device)


def ones(shape: Sequence[int], dtype=None, device=None) -> Tensor:
    return _factory(torch.ones, shape, dtype, device)


class _Context:
    """The current device (CPU until ``setDevice``); ``setDevice`` on a CUDA device also makes it torch's current."""

    def __init__(self):
        self._device = Device("cpu")

    def getDevice(self) -> Device:
        return self._device

    def setDevice(self, dev) -> None:
        dev = dev if isinstance(dev, Device) else Device(dev)
        if dev.type == "cuda":
            torch.cuda.set_device(dev._underlying)
        self._device = dev

    def getDeviceCount(self, type="nvidia") -> int:
        t = _DeviceType.parse(type)
        if t is _DeviceType.CPU:
            return 1
        mod = getattr(torch, t.torch_type, None)
        return mod.device_count() if mod is not None and hasattr(mod, "device_count") else 0

    def syncDevice(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device._underlying)

    syncStream = syncDevice


context = _Context()
