"""Ports that take their process down, for the isolation tests (tests/test_isolation.py): each is the
grid_sample fallback, except on problems with a batch of two (or, for the *_when_timed ones, on images
of over 300 pixels: benchmark shapes, not parity ones), where it segfaults, aborts or never
returns. Loaded with `--impl-module misbehaving_ports:<name>` (tests/ on sys.path)."""

import ctypes
import os
import time

import impls


def honest_unless(condition, misbehave):
    def port(input, offset, mask, *scalars):
        if condition(input):
            misbehave()
        return impls.dcnv3(input, offset, mask, *scalars, impl="grid_sample")

    return port


def batch_of_two(input):
    return input.shape[0] == 2


def benchmark_sized(input):
    return input.shape[1] * input.shape[2] > 300


def segfault():
    ctypes.string_at(0)


def hang():
    time.sleep(3600)


segfaults = honest_unless(batch_of_two, segfault)
aborts = honest_unless(batch_of_two, os.abort)
hangs = honest_unless(batch_of_two, hang)
segfaults_when_timed = honest_unless(benchmark_sized, segfault)
hangs_when_timed = honest_unless(benchmark_sized, hang)
