"""CPU XLA flags: appended once, never over a user's choice, off on request, accepted by this XLA."""

import os
import subprocess
import sys

from pmd_jax.cpu_flags import CPU_XLA_FLAGS, OPT_OUT_ENV, add_cpu_xla_flags


def test_flags_are_appended_to_the_users_flags_once():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    add_cpu_xla_flags(env)
    add_cpu_xla_flags(env)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", *CPU_XLA_FLAGS]
    empty: dict[str, str] = {}
    assert add_cpu_xla_flags(empty) == " ".join(CPU_XLA_FLAGS)


def test_a_flag_the_user_set_is_kept_and_opt_out_leaves_flags_alone():
    name = CPU_XLA_FLAGS[0].split("=", 1)[0]
    env = {"XLA_FLAGS": f"{name}=dot"}
    assert add_cpu_xla_flags(env) == f"{name}=dot"
    env = {OPT_OUT_ENV: "0"}
    add_cpu_xla_flags(env)
    assert "XLA_FLAGS" not in env


def test_importing_pmd_jax_sets_flags_this_xla_accepts():
    # XLA aborts the process on a flag it does not know: this fails if a JAX upgrade drops one.
    code = "import pmd_jax, os, jax.numpy as jnp; print(float(jnp.ones(3).sum()), os.environ['XLA_FLAGS'])"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", OPT_OUT_ENV)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    total, flags = out.stdout.split(maxsplit=1)
    assert float(total) == 3.0 and flags.split() == list(CPU_XLA_FLAGS)
