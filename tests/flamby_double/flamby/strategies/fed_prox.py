"""FLamby's FedProx strategy (``flamby.strategies.FedProx``)."""

from __future__ import annotations

from flamby.strategies.fed_avg import FedAvg


class FedProx(FedAvg):
    """FedAvg whose clients add ``mu / 2 * ||w - w_round_start||^2`` to their loss."""

    def __init__(
        self,
        training_dataloaders,
        model,
        loss,
        optimizer_class,
        learning_rate,
        num_updates,
        nrounds,
        mu,
        dp_target_epsilon=None,
        dp_target_delta=None,
        dp_max_grad_norm=None,
        log=False,
        log_period=100,
        bits_counting_function=None,
        logdir="./runs",
        log_basename="fed_prox",
        seed=None,
    ):
        super().__init__(
            training_dataloaders,
            model,
            loss,
            optimizer_class,
            learning_rate,
            num_updates,
            nrounds,
            dp_target_epsilon,
            dp_target_delta,
            dp_max_grad_norm,
            log,
            log_period,
            bits_counting_function,
            logdir=logdir,
            log_basename=log_basename,
            seed=seed,
        )
        self.mu = mu

    def _local_optimization(self, _model, dataloader_with_memory):
        _model._prox_local_train(dataloader_with_memory, self.num_updates, self.mu)
