"""A link model (latency + bytes / bandwidth) and a way to run real communication as if over that link.

Bandwidths are in bytes per second inside the model; `Link.from_gbps` takes gigabits per second, the unit
clusters are usually described in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Link:
    bandwidth_Bps: float
    latency_s: float = 0.0
    name: str = ""

    def __post_init__(self):
        if not self.bandwidth_Bps > 0:
            raise UserError(f"link bandwidth must be > 0, got {self.bandwidth_Bps}")
        if self.latency_s < 0:
            raise UserError(f"link latency must be >= 0, got {self.latency_s}")

    @classmethod
    def from_gbps(cls, gbps: float, latency_s: float = 0.0, name: str = "") -> Link:
        if not gbps > 0:
            raise UserError(f"link bandwidth must be > 0 Gbps, got {gbps}")
        return cls(gbps * 1e9 / 8, latency_s, name or f"{gbps:g} Gbps")

    @property
    def gbps(self) -> float:
        return self.bandwidth_Bps * 8 / 1e9

    def time(self, nbytes: float, messages: int = 1) -> float:
        """Seconds to move `nbytes` in `messages` messages: messages x latency + bytes / bandwidth."""
        return messages * self.latency_s + nbytes / self.bandwidth_Bps

    def all_reduce_time(self, nbytes: float, world_size: int) -> float:
        """Ring all-reduce of an `nbytes` tensor: 2(n-1) steps, each moving nbytes/n."""
        n = world_size
        if n <= 1:
            return 0.0
        return self.time(2 * (n - 1) / n * nbytes, 2 * (n - 1))

    def all_gather_time(self, shard_bytes: float, world_size: int) -> float:
        n = world_size
        if n <= 1:
            return 0.0
        return self.time((n - 1) * shard_bytes, n - 1)

    def wait_until(self, start: float, nbytes: float, messages: int = 1) -> float:
        """Sleep until this link's time for `nbytes` has passed since `start` (a perf_counter value).

        A real transfer that already took longer is left as it is. Returns the seconds slept.
        """
        remaining = start + self.time(nbytes, messages) - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)
            return remaining
        return 0.0


def emulate(link: Link, nbytes: float, fn, *args, messages: int = 1, **kwargs):
    """Run `fn(*args, **kwargs)` (a real collective, say) and wait out the rest of `link`'s time for it."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    link.wait_until(start, nbytes, messages)
    return out
