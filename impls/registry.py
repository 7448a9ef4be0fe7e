"""Registries of implementations, one per operator: a decorator for built-ins, entry points for plug-ins.

An implementation is a plain function of the operator's arguments (DCNv3's
`fn(input, offset, mask, params)`, MSDA's `fn(value, spatial_shapes,
level_start_index, sampling_locations, attention_weights)`) that assumes
validated arguments. A registry's `register` wraps it into an `Implementation`
that knows where it runs, validates once per call and is what the parity gate
and the benchmark see. It knows nothing about parity, timing or reports.

Plug-ins: a package declares, in its pyproject.toml, under the operator's group
(DCNv3's `dcnv3_harness.impls`, MSDA's `dcnv3_harness.msda`),

    [project.entry-points."dcnv3_harness.impls"]
    my_kernel = "my_package.dcnv3_impl"

and loading that object (usually a module whose import runs `register`, or an
`Implementation`) makes it appear in every test, gate and benchmark of its operator.

This module's functions (`register`, `get`, `names`, ...) are DCNv3's registry's, as they always were.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from impls import devices
from impls.params import validate


FLOATING = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

Kernel = Callable[..., torch.Tensor]
# (*the operator's arguments, dtypes, implementation name): a ValueError naming the argument, before any work
# (the operator's contract).
Validator = Callable[..., object]
# Extra availability condition beyond the device type: (device) -> reason or None.
Requirement = Callable[[torch.device], "str | None"]
# Given the operator's (validated) arguments: a sentence saying which of them lies outside the
# implementation's documented limits, or None.
Envelope = Callable[..., "str | None"]
# A kernel's own backward, without autograd: (grad_output, input, offset, mask, params.scalars()) -> three
# gradients; the same function its torch.library autograd calls (impls/operators.py register_backward).
# (DCNv3's; InternImage's extension interface is what needs it.)
Gradients = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple], tuple]


@dataclass(frozen=True)
class Operator:
    """What an operator's registry needs of its contract: the argument check and which arguments take a
    gradient (the others are integer or static: DCNv3's params, MSDA's two index tensors)."""

    name: str
    entry_point_group: str
    validate: Validator = field(repr=False)
    differentiable: tuple[int, ...]

    def gradient_needed(self, args) -> bool:
        return needs_gradient(*(args[i] for i in self.differentiable))


DCNV3 = Operator("dcnv3", "dcnv3_harness.impls", validate, (0, 1, 2))
ENTRY_POINT_GROUP = DCNV3.entry_point_group


@dataclass(frozen=True)
class Implementation:
    name: str
    fn: Kernel = field(repr=False)
    dtypes: frozenset
    device_types: tuple[str, ...]
    requires: Requirement | None = field(default=None, repr=False)
    # "auto" picks the available implementation with the highest priority.
    priority: int = 0
    baseline: bool = False
    # Compiles a kernel for every new shape (seconds each): parity runs it on
    # the regression problems and a few drawn ones instead of a full sweep.
    compiles_per_shape: bool = False
    # True while it runs in an interpreter (on any device), for parity checks on
    # small shapes: "auto" never picks it then and the benchmark does not time it.
    interpreted: Callable[[], bool] = field(default=lambda: False, repr=False)
    # Where the kernel has a backward of its own: callers holding no autograd graph (InternImage's
    # DCNv3 extension interface, impls/internimage_compat.py) need not run the forward again.
    gradients: Gradients | None = field(default=None, repr=False)
    # No backward (a deployment runtime): the gate checks its output only, the benchmark times its forward
    # only, and "auto" never picks it for tensors that need a gradient.
    forward_only: bool = False
    # The limits its vendor documents (impls/msda/mx_driving.py): a call outside them raises
    # UnsupportedInput, and the gate marks such a case "unsupported", not wrong.
    envelope: Envelope | None = field(default=None, repr=False)
    description: str = ""
    # The `package.module:Name` it was loaded from (impls/external.py), so a child process can load it again.
    origin: str = ""
    operator: Operator = field(default=DCNV3, repr=False)

    def unavailable_reason(self, device: torch.device | str) -> str | None:
        """A sentence saying why this implementation cannot run on device, or None."""
        device_type = devices.type_of(device)
        if device_type not in self.device_types:
            return f"{self.name} does not run on {device_type} (runs on {', '.join(self.device_types)})"
        reason = devices.unavailable_reason(device_type)
        if reason is None and self.requires is not None:
            reason = self.requires(device if isinstance(device, torch.device) else torch.device(device))
        return reason

    def untimed_reason(self, device: torch.device | str) -> str | None:
        """Why the benchmark must not time it on device (unavailable, or only interpreted there), or None."""
        if self.interpreted():
            return f"{self.name} runs in an interpreter here: parity checks, not timed"
        return self.unavailable_reason(device)

    def available(self, device: torch.device | str) -> bool:
        return self.unavailable_reason(device) is None

    def supports(self, dtype: torch.dtype) -> bool:
        return dtype in self.dtypes

    def outside_envelope(self, *args) -> str | None:
        """Why these arguments lie outside the implementation's documented limits, or None."""
        return None if self.envelope is None else self.envelope(*args)

    def __call__(self, *args) -> torch.Tensor:
        self.operator.validate(*args, self.dtypes, self.name)
        device = args[0].device
        reason = self.unavailable_reason(device)
        if reason is not None:
            raise ValueError(f"{self.operator.name}'s first argument is on {device}, where {reason}")
        if self.forward_only and self.operator.gradient_needed(args):
            raise ValueError(f"{self.name} has no backward: call it under torch.no_grad() or on tensors "
                             "that do not require grad")
        unsupported = self.outside_envelope(*args)
        if unsupported is not None:
            raise UnsupportedInput(f"{self.name} does not support this call: {unsupported}")
        return self.fn(*args)


class UnsupportedInput(ValueError):
    """Legal arguments outside an implementation's documented limits."""


# Every operator's registry by the operator's name (DCNv3's, impls/msda's).
REGISTRIES: dict[str, "Registry"] = {}


class Registry:
    """One operator's implementations by name: built-ins added by `register`, plug-ins loaded from the
    operator's entry-point group on first lookup."""

    def __init__(self, operator: Operator):
        self.operator = operator
        self.implementations: dict[str, Implementation] = {}
        self._plugins_loaded = False
        REGISTRIES[operator.name] = self

    def register(
        self,
        name: str,
        *,
        dtypes: Iterable[torch.dtype] = FLOATING,
        device_types: Iterable[str] = devices.DEVICE_TYPES,
        requires: Requirement | None = None,
        priority: int = 0,
        baseline: bool = False,
        compiles_per_shape: bool = False,
        interpreted: Callable[[], bool] = lambda: False,
        gradients: Gradients | None = None,
        forward_only: bool = False,
        envelope: Envelope | None = None,
    ) -> Callable[[Kernel], Implementation]:
        """Decorator: register `fn(*the operator's arguments)` as implementation `name`."""

        def decorate(fn: Kernel) -> Implementation:
            impl = Implementation(
                name=name,
                fn=fn,
                dtypes=frozenset(dtypes),
                device_types=tuple(device_types),
                requires=requires,
                priority=priority,
                baseline=baseline,
                compiles_per_shape=compiles_per_shape,
                interpreted=interpreted,
                gradients=gradients,
                forward_only=forward_only,
                envelope=envelope,
                description=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
                operator=self.operator,
            )
            self.add(impl)
            return impl

        return decorate

    def add(self, impl: Implementation) -> None:
        if impl.operator != self.operator:
            raise ValueError(f"{impl.name!r} implements {impl.operator.name}, not {self.operator.name}")
        existing = self.implementations.get(impl.name)
        # The same --impl-module loaded again (a second gate run in one process) wraps it anew: not a clash.
        same_origin = existing is not None and impl.origin and existing.origin == impl.origin
        if existing is not None and existing.fn is not impl.fn and not same_origin:
            raise ValueError(f"an implementation named {impl.name!r} is already registered")
        self.implementations[impl.name] = impl

    def remove(self, name: str) -> None:
        self.implementations.pop(name, None)

    def load_plugins(self, force: bool = False) -> None:
        """Load the entry points of the operator's group once (again with force).

        A plug-in that fails to load is registered as unavailable everywhere, with
        the error as its reason, so the gate shows it instead of hiding it.
        """
        if self._plugins_loaded and not force:
            return
        self._plugins_loaded = True
        for entry_point in importlib.metadata.entry_points(group=self.operator.entry_point_group):
            try:
                loaded = entry_point.load()
            except Exception as error:
                reason = f"plug-in {entry_point.value!r} failed to load: {type(error).__name__}: {error}"
                self.add(_broken_plugin(entry_point.name, reason, self.operator))
                continue
            if isinstance(loaded, Implementation):
                self.add(loaded)

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self.implementations)

    def get(self, name: str) -> Implementation:
        self.load_plugins()
        try:
            return self.implementations[name]
        except KeyError:
            known = ", ".join(sorted(self.implementations))
            raise KeyError(f"no implementation named {name!r}; known: {known}") from None

    def baseline(self) -> Implementation:
        self.load_plugins()
        return next(impl for impl in self.implementations.values() if impl.baseline)

    def auto(self, device: torch.device, dtype: torch.dtype, backward: bool = False) -> Implementation:
        """The highest-priority implementation available on device for dtype, interpreters excluded, and
        forward-only ones too where a backward will be needed."""
        self.load_plugins()
        candidates = [
            impl for impl in self.implementations.values()
            if impl.supports(dtype) and not impl.interpreted() and impl.available(device)
            and not (backward and impl.forward_only)
        ]
        if not candidates:
            needed = " with a backward" if backward else ""
            raise ValueError(f"input dtype {dtype} is not supported by any implementation{needed} available on {device}")
        return max(candidates, key=lambda impl: impl.priority)


def _broken_plugin(name: str, reason: str, operator: Operator) -> Implementation:
    def fail(*_args):
        raise RuntimeError(reason)

    return Implementation(
        name=name,
        fn=fail,
        dtypes=frozenset(),
        device_types=devices.DEVICE_TYPES,
        requires=lambda _device: reason,
        operator=operator,
    )


def needs_gradient(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


DCNV3_IMPLEMENTATIONS = Registry(DCNV3)
_REGISTRY = DCNV3_IMPLEMENTATIONS.implementations
register = DCNV3_IMPLEMENTATIONS.register
add = DCNV3_IMPLEMENTATIONS.add
remove = DCNV3_IMPLEMENTATIONS.remove
load_plugins = DCNV3_IMPLEMENTATIONS.load_plugins
names = DCNV3_IMPLEMENTATIONS.names
get = DCNV3_IMPLEMENTATIONS.get
baseline = DCNV3_IMPLEMENTATIONS.baseline
auto = DCNV3_IMPLEMENTATIONS.auto
