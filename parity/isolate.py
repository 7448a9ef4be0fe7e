"""Run one implementation's work in a child process, so that a port which segfaults, aborts or hangs
costs a failing row instead of the run (tritonbench's `--isolate`).

Children fork from a forkserver that imported torch and the harness once (a fresh interpreter per
implementation would cost seconds each) and that never touched a device: CUDA and the NPU runtime
cannot be used in a child forked after the parent initialised them. Each child rebuilds its
implementation by name, loading the `--impl-module` spec the implementation came from
(Implementation.origin), so an implementation registered only inside the parent cannot be isolated:
it fails with a sentence saying to use `--no-isolate`.

A child runs the items in order and reports each as it ends; a task may also say what it is on
(`heartbeat`: a long item, such as timing every case of an implementation). A child that dies (a signal
or an exit) or reports nothing for `timeout` seconds is killed, the item it was on becomes a failure
naming what happened (and the last heartbeat), and a fresh child goes on with the rest, up to
CRASHES_ALLOWED times.
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.connection
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from impls import Implementation, devices, external
from impls.registry import REGISTRIES

# Preloaded by the forkserver: what every child needs, imported once.
PRELOAD = ["torch", "impls", "parity.compare", "parity.isolate"]
CRASHES_ALLOWED = 3
# A task: (implementation, item, device) -> a picklable value; a module-level function, so that it pickles.
Task = Callable[[Implementation, Any, torch.device], Any]


def _silent(note: str) -> None:
    pass


_beat: Callable[[str], None] = _silent


def heartbeat(note: str) -> None:
    """From a task: still working, now on `note`. In a child the parent's timeout starts again and a
    crash is reported as being while `note`; in-process it does nothing."""
    _beat(note)


@dataclass
class Outcome:
    item: Any
    value: Any  # the task's value; None when it failed
    error: str  # "" when it did not


def inline(task: Task, impl: Implementation, work: list, device: torch.device) -> Iterator[Outcome]:
    """The work in this process (--no-isolate): an exception fails its item, a crash ends the run."""
    for item in work:
        try:
            yield Outcome(item, task(impl, item, device), "")
        except Exception as exception:
            yield Outcome(item, None, devices.describe(exception))


def isolated(task: Task, impl: Implementation, work: list, device: torch.device,
             timeout: float) -> Iterator[Outcome]:
    """The work in child processes: as `inline`, and a crash or a hang fails the item it was on."""
    registry = REGISTRIES[impl.operator.name]
    if not impl.origin and impl.name in registry.names() and registry.get(impl.name) is not impl:
        # A child would rebuild the registered one of that name, a different implementation.
        reason = (f"{impl.name} cannot run in a child process: it is not the implementation registered under that "
                  "name (a child would run that one); run it with --no-isolate")
        yield from (Outcome(item, None, reason) for item in work)
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    remaining, crashes = list(work), 0
    while remaining:
        receiving, sending = context.Pipe(duplex=False)
        child = context.Process(target=_serve, args=(sending, sys.path, task, impl.name, impl.origin, impl.operator.name, device,
                                      remaining),
                                name=f"parity-{impl.name}", daemon=True)
        child.start()
        sending.close()
        done, failure, note = 0, "", ""
        try:
            while done < len(remaining):
                message = _receive(receiving, child, timeout)
                if message is None:
                    failure = f"timed out after {timeout:g} s"
                    break
                if isinstance(message, BaseException):
                    failure = _death(child)
                    break
                kind, *payload = message
                if kind == "alive":
                    note = payload[0]
                    continue
                if kind == "unresolvable":
                    yield from (Outcome(item, None, payload[0]) for item in remaining)
                    return
                if kind == "done":
                    value, error = payload
                    yield Outcome(remaining[done], value, error)
                    done, note = done + 1, ""
        finally:
            receiving.close()
            if child.is_alive():
                child.kill()
            child.join()
        if not failure:
            return
        if note:
            failure = f"{failure} while {note}"
        crashes += 1
        on = remaining[done]
        remaining = remaining[done + 1:]
        yield Outcome(on, None, failure)
        if crashes == CRASHES_ALLOWED and remaining:
            note = f"not run: {impl.name} crashed or hung {crashes} times (the last: {failure})"
            yield from (Outcome(item, None, note) for item in remaining)
            return


def _receive(receiving, child, timeout: float):
    """The child's next message; None after `timeout` seconds of silence; the EOFError once it is gone."""
    ready = multiprocessing.connection.wait([receiving, child.sentinel], timeout)
    if not ready:
        return None
    if receiving in ready or receiving.poll():
        try:
            return receiving.recv()
        except EOFError as gone:
            return gone
    return EOFError("the child exited")


def _death(child) -> str:
    child.join(5)
    code = child.exitcode
    if code is None:
        return "stopped reporting while still running"
    if code < 0:
        return f"crashed: {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _serve(sending, path: list[str], task: Task, name: str, origin: str, operator: str, device: torch.device,
           work: list) -> None:
    global _beat
    # The forkserver holds the sys.path of when it started; an --impl-module may need what came later.
    sys.path[:] = path

    def beat(note: str) -> None:
        sending.send(("alive", note))

    _beat = beat
    importlib.invalidate_caches()
    try:
        registry = REGISTRIES[operator]
        if origin and name not in registry.names():
            external.load([origin], operator)
        impl = registry.get(name)
    except (KeyError, ValueError) as missing:
        sending.send(("unresolvable", f"{name} cannot run in a child process ({devices.describe(missing)}): it is "
                      "registered in this process only, not a built-in, plug-in or --impl-module; run it with --no-isolate"))
        return
    for item in work:
        try:
            value, error = task(impl, item, device), ""
        except Exception as exception:
            value, error = None, devices.describe(exception)
        sending.send(("done", value, error))
    sending.close()
