"""Progress bars whose rate and ETA leave out the first, compiling step.

The first step of a jit'd loop (a training step, an encoded batch) mostly
compiles; counted into a bar's rate, it makes the ETA of a long run read
many times too long ("1/310 [00:03<20:09"). A `Bar` counts its first
update's units but restarts its clock when it gets them, so the elapsed
time, the rate and the ETA measure the steps that follow.
"""

from __future__ import annotations

from tqdm.auto import tqdm


class Bar(tqdm):
    """A tqdm bar (same arguments) whose rate and ETA start after its first `update`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._compiling = True

    def update(self, n: float = 1) -> bool | None:
        """Counts `n` more units; the first call's time is left out of the rate and ETA."""
        if not self._compiling:
            return super().update(n)
        self._compiling = False
        self.unpause()  # the clock restarts now, as if the bar had waited for the first step
        super().update(n)  # no time since the restart: no display, no rate sample
        self.initial = self.last_print_n = self.n  # the rate counts the units from here on
        return None
