"""Names of a pool of identical handler actors (the X509Signer pool: `x509.workers`).

The first worker keeps the plain name (`x509_signer`), so one worker is exactly the actor
of before; the others are `x509_signer_2`, `x509_signer_3`, ... Each is a child of its own
in the Supervisor (created, restarted and listed in `signer-admin status` one by one), and
the Dispatcher finds a pool's members in its address book by these names.
"""
from __future__ import annotations

import re
from typing import Iterable

POOLED = "x509_signer"  # CPU-bound, no state but the configuration: worth more than one


def worker_names(name: str, count: int) -> list[str]:
    return [name] + [f"{name}_{number}" for number in range(2, count + 1)]


def pool_base(name: str) -> str:
    """The pool a worker belongs to (its own name for any other actor)."""
    match = re.fullmatch(rf"({re.escape(POOLED)})_\d+", name)
    return match.group(1) if match else name


def members(name: str, names: Iterable[str]) -> list[str]:
    """The workers of pool `name` among `names`, in number order (just `name` if unpooled)."""
    found = [n for n in names if pool_base(n) == name]
    return sorted(found, key=lambda n: (n != name, int(n.rsplit("_", 1)[1]) if n != name else 0))
