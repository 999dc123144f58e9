"""An exponential moving average of a network's weights, shared by both trainers.

On a small data set the last steps' noise moves the val mIoU by several points from one validation to the
next, and which validation happens to be best then decides the model. Validating (and keeping) a moving
average of the weights smooths that out, so two runs that differ only in their seed end up close.
"""

from __future__ import annotations

import paddle


class WeightAverage:
    """The average of the network's weights (and BatchNorm statistics) when ``decay`` > 0; ``decay`` 0
    turns it off. The decay ramps up as (1 + n) / (10 + n) over the first steps, so early averages do not
    drag in the initial weights. ``swap_in`` puts the average into the network (to validate or save it),
    ``swap_out`` restores the raw weights training continues from."""

    def __init__(self, decay: float, average: dict | None = None, steps: int = 0):
        self.decay, self.average, self.steps = decay, average, steps
        self.live = None  # the raw weights while the average is swapped in

    def update(self, network) -> None:
        weights = network.state_dict()
        rate = min(self.decay, (1 + self.steps) / (10 + self.steps))
        self.steps += 1
        with paddle.no_grad():
            if self.average is None:
                self.average = {k: v.clone() for k, v in weights.items()}
            for key, value in weights.items():
                kept = self.average[key]
                self.average[key] = kept * rate + value * (1 - rate) if value.is_floating_point() else value.clone()

    def swap_in(self, network) -> None:
        if self.decay and self.average is not None:
            self.live = {k: v.clone() for k, v in network.state_dict().items()}
            network.set_state_dict(self.average)

    def swap_out(self, network) -> None:
        if self.live is not None:
            network.set_state_dict(self.live)
            self.live = None

    def raw_weights(self, network) -> dict:
        return self.live if self.live is not None else network.state_dict()
