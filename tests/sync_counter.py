"""Count device-to-host synchronisations in the calling thread, by what would make one on a GPU.

A value leaves the device in two ways, and both are caught:
- the Python-level readers of a tensor: `item`, `tolist`, `numpy`, `cpu`, `__bool__`, `__float__`,
  `__int__`, `__index__`, `__complex__`, `__format__`, `__array__` (patched on `torch.Tensor` while
  counting);
- every operator that reads a value on the host or sizes its output by the data: a
  `TorchDispatchMode` sees each aten call, including those made from C++ (`item()` of a C++ `int(t)`),
  and counts `_local_scalar_dense` (behind every scalar read), `nonzero`, `masked_select`, `unique*`,
  `repeat_interleave`, indexing with a boolean mask (reads or writes) and copies to the CPU.

`phase` labels each sync with the phase the test says the code is in (`SyncCounter.phase(name)`);
`paused()` stops counting (the data loader, which works on host tensors by design).  Counting is
done once per reader call: a patched reader that calls an operator counts once, not twice.
"""

import contextlib
import threading
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READERS = (
    "item",
    "tolist",
    "numpy",
    "cpu",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__complex__",
    "__format__",
    "__array__",
)
DATA_DEPENDENT = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::unique_dim",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_consecutive",
    "aten::repeat_interleave",
}

MASK_INDEXING = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


class _Ops(TorchDispatchMode):
    def __init__(self, counter: "SyncCounter"):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in MASK_INDEXING and any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1]):
            self.counter.hit(name)
            return func(*args, **kwargs)
        if name == "aten::_to_copy":
            to_cpu = str(kwargs.get("device")) == "cpu" and args[0].device.type != "cpu"
        else:
            to_cpu = name == "aten::copy_" and args[0].device.type == "cpu" and args[1].device.type != "cpu"
        if name in DATA_DEPENDENT or to_cpu:
            self.counter.hit(name)
        return func(*args, **kwargs)


class SyncCounter:
    """`with SyncCounter() as syncs:` ... `syncs.by_phase` (Counter phase -> syncs), `syncs.events`."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []
        self._phase = "outside"
        self._paused = 0
        self._inside = 0
        self._thread = threading.get_ident()

    @property
    def by_phase(self) -> Counter:
        return Counter(phase for phase, _ in self.events)

    def hit(self, what: str) -> None:
        if self._paused or self._inside or threading.get_ident() != self._thread:
            return
        self.events.append((self._phase, what))

    @contextlib.contextmanager
    def phase(self, name: str):
        previous, self._phase = self._phase, name
        try:
            yield
        finally:
            self._phase = previous

    @contextlib.contextmanager
    def paused(self):
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def _reader(self, name: str, real):
        counter = self

        def read(tensor, *args, **kwargs):
            counter.hit(name)
            counter._inside += 1
            try:
                return real(tensor, *args, **kwargs)
            finally:
                counter._inside -= 1

        return read

    def __enter__(self) -> "SyncCounter":
        self._saved = {name: torch.Tensor.__dict__.get(name) for name in READERS}
        for name in READERS:
            setattr(torch.Tensor, name, self._reader(name, getattr(torch.Tensor, name)))
        self._mode = _Ops(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for name, value in self._saved.items():
            if value is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, value)
