"""`sycojax.xla_cpu`: the XLA:CPU flag sycojax adds at import, and when it must keep its hands off."""

import os
import subprocess
import sys

import pytest

from sycojax import xla_cpu


@pytest.fixture
def env(monkeypatch):
    """A clean slate: no XLA_FLAGS, no opt-out, a known jaxlib, backends not started."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("SYCOJAX_XLA_CPU_DEFAULTS", raising=False)
    monkeypatch.setattr(xla_cpu, "_jaxlib_minor", lambda: xla_cpu.KNOWN_JAXLIB[0])
    monkeypatch.setattr(xla_cpu, "_backends_started", lambda: False)
    return monkeypatch


def test_adds_the_flag_and_keeps_the_users_flags(env):
    env.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert xla_cpu.apply_defaults()
    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {xla_cpu.YNN_REDUCE_OFF}"
    assert not xla_cpu.apply_defaults()  # idempotent: the flag is there now
    assert os.environ["XLA_FLAGS"].count("ynn_fusion_type") == 1


@pytest.mark.parametrize("case", ["user_set", "opt_out", "unknown_jaxlib", "no_jaxlib", "backends_started"])
def test_leaves_xla_flags_alone(env, case):
    flags = "--xla_cpu_experimental_ynn_fusion_type=dot" if case == "user_set" else ""
    env.setenv("XLA_FLAGS", flags)
    if case == "opt_out":
        env.setenv("SYCOJAX_XLA_CPU_DEFAULTS", "0")
    if case == "unknown_jaxlib":  # XLA aborts on a flag it does not know: only verified jaxlibs get it
        env.setattr(xla_cpu, "_jaxlib_minor", lambda: (0, 99))
    if case == "no_jaxlib":
        env.setattr(xla_cpu, "_jaxlib_minor", lambda: None)
    if case == "backends_started":  # too late: XLA has read its flags
        env.setattr(xla_cpu, "_backends_started", lambda: True)
    assert not xla_cpu.apply_defaults()
    assert os.environ["XLA_FLAGS"] == flags


def test_importing_sycojax_applies_it_before_jax_starts():
    code = ("import os, sycojax, jax; jax.numpy.ones(2).block_until_ready(); "
            "print(os.environ.get('XLA_FLAGS', ''), sycojax.xla_cpu._backends_started())")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "SYCOJAX_XLA_CPU_DEFAULTS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    expected = xla_cpu.YNN_REDUCE_OFF if xla_cpu._jaxlib_minor() in xla_cpu.KNOWN_JAXLIB else ""
    assert out.split() == [*expected.split(), "True"]
