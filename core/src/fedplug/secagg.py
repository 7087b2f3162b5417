"""The contract between core and a secure-aggregation scheme (``fedplug_register_secagg_schemes``).

A scheme lets the researcher learn only the sample-weighted average of the nodes' parameters.
Core knows nothing of how: it carries the scheme's data in messages (:class:`~fedplug.messages.
SecAggData` inside ``TrainRequest``/``TrainReply``, and ``SecAggRequest``/``SecAggReply`` for the
scheme's own steps), and hands each training round to the scheme in place of its plain
aggregation.

Researcher side, one :class:`SecAggScheme` per experiment (``Experiment(secagg=...)``): it is the
experiment's *fit workflow*. :meth:`SecAggScheme.run_round` is given the round
(:class:`fedplug.experiment.rounds.TrainingRound`), runs the scheme's steps through
``round.exchange(data, nodes)`` (key exchange, unmasking), trains through ``round.train(nodes, fold,
secagg=context)`` and returns the weighted average, or raises
:class:`~fedplug.errors.SecAggError`, in which case the round fails and the global model is
unchanged. Nodes that drop out of its steps are recorded with ``round.fail(node, reason)``.

Node side, one :class:`SecAggNode` per node and experiment (made by :meth:`SecAggScheme.node_side`):
it answers the scheme's steps and turns the node's trained parameters into what the node sends.
A plugin's ``fedplug_node_request`` implementations call it (fedplug-secagg's serve every
registered scheme this way).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # annotations only: a contract imports nothing above it
    from fedplug.experiment.rounds import TrainingRound
    from fedplug.messages import SecAggData
    from fedplug.plan import Params


class SecAggNode:
    """The node side of a scheme, for one experiment on one node."""

    def handle(self, round_index: int, data: SecAggData) -> SecAggData:
        """Answer one step of the scheme (e.g. key exchange, unmasking)."""
        raise NotImplementedError

    def mask(
        self, round_index: int, context: SecAggData, params: Params, n_samples: int
    ) -> SecAggData:
        """What the node sends instead of ``params`` (trained on ``n_samples`` samples)."""
        raise NotImplementedError


class SecAggScheme:
    """The researcher side of a scheme: a fit workflow. ``config`` is the scheme's settings
    object, or None for its defaults."""

    #: The name the scheme is registered under.
    name: ClassVar[str] = "secagg"
    #: The scheme's settings dataclass (``Experiment(secagg=settings)``), which a checkpoint
    #: stores by its fields and :meth:`Experiment.load_checkpoint` rebuilds through this
    #: registered class, never through an import path read from the file.
    settings_class: ClassVar[type | None] = None

    def __init__(self, config: Any = None) -> None:
        self.config = config

    @classmethod
    def node_side(cls, node: str, experiment_id: str) -> SecAggNode:
        """A fresh node-side state for ``node`` in experiment ``experiment_id``."""
        raise NotImplementedError

    def run_round(self, round: TrainingRound) -> Params:
        """Run one training round under the scheme and return the weighted average of the
        parameters the surviving nodes trained."""
        raise NotImplementedError
