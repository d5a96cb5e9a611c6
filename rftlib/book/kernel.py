"""The kernel manager the runner starts notebooks with: a per-kernel environment, and no TCP warning.

:func:`kernel_manager_class` returns a subclass of jupyter_client's ``AsyncKernelManager`` (what
nbclient, under papermill, uses by default) that

* starts the kernel with the launching process's environment plus ``env`` (e.g. the thread policy
  ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``RFT_THREADS`` and the progress file
  ``RFT_PROGRESS_FILE`` of :mod:`rftlib.progress`), so parallel steps started from one process each
  get their own;
* asks for CurveZMQ transport encryption (``transport_encryption="auto"``) when pyzmq has Curve and
  the kernelspec declares ``supported_encryption: curve`` (ipykernel 7's does). That is the knob the
  kernel's ``Kernel is running over TCP without encryption`` warning names; where encryption is not
  available, the kernel is started with ``--IPKernelApp.log_level=ERROR`` instead, which silences
  the warning too.

Example:
    >>> km = kernel_manager_class({"RFT_THREADS": "1"})
    >>> km.extra_env, km.__name__
    ({'RFT_THREADS': '1'}, 'RftKernelManager')
    >>> kernel_manager_class({"N": 1})
    Traceback (most recent call last):
    ...
    rftlib.errors.ParameterError: env['N'] must be a string, got int 1
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from rftlib.errors import ParameterError

#: Extra kernel argument that silences the TCP warning where encryption is not available.
QUIET_ARGUMENT = "--IPKernelApp.log_level=ERROR"


def _curve_available(km: Any) -> bool:
    """Whether this kernel can be started with CurveZMQ encryption."""
    try:
        import zmq

        return bool(zmq.has("curve")) and km._kernel_supports_curve_encryption() and km.transport in ("tcp", "ipc")
    except Exception:  # noqa: BLE001 - an older jupyter_client: no manager-side encryption
        return False


def kernel_manager_class(env: Mapping[str, str] | None = None) -> type:
    """A kernel manager class whose kernels get ``env`` on top of this process's environment and
    start without the unencrypted-TCP warning (see the module docstring).

    Args:
        env: environment variables for the kernel (names and values are strings).

    Raises:
        ParameterError: a value that is not a string.

    Example:
        >>> sorted(kernel_manager_class({"OMP_NUM_THREADS": "1"}).extra_env)
        ['OMP_NUM_THREADS']
    """
    from jupyter_client import AsyncKernelManager

    extra = dict(env or {})
    for k, v in extra.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ParameterError(f"env[{k!r}] must be a string, got {type(v).__name__} {v!r}")

    class RftKernelManager(AsyncKernelManager):  # type: ignore[misc, valid-type]
        extra_env = extra

        async def _async_pre_start_kernel(self, **kw: Any) -> Any:
            kw["env"] = {**(kw.get("env") or os.environ), **self.extra_env}
            if _curve_available(self):
                kw.setdefault("transport_encryption", "auto")
            else:
                args = list(kw.get("extra_arguments") or [])
                kw["extra_arguments"] = [*args, QUIET_ARGUMENT] if QUIET_ARGUMENT not in args else args
            return await super()._async_pre_start_kernel(**kw)

    return RftKernelManager


__all__ = ["QUIET_ARGUMENT", "kernel_manager_class"]
