"""FLamby's FedAvg strategy (``flamby.strategies.FedAvg``)."""

from __future__ import annotations

import time

import torch

from flamby.strategies.utils import DataLoaderWithMemory, _Model


class FedAvg:
    """Federated averaging over ``training_dataloaders``, FLamby's way.

    Each round, each client in turn trains its model ``num_updates`` batches from where its
    :class:`DataLoaderWithMemory` stopped, its update (new - old parameters, numpy float32) is
    kept and its model put back; the updates, each multiplied by the client's train size, are
    summed and divided by the total size, and that average update is added to every client's
    model. ``run()`` does ``nrounds`` rounds and returns the clients' (equal) models.
    """

    def __init__(
        self,
        training_dataloaders,
        model,
        loss,
        optimizer_class,
        learning_rate,
        num_updates,
        nrounds,
        dp_target_epsilon=None,
        dp_target_delta=None,
        dp_max_grad_norm=None,
        log=False,
        log_period=100,
        bits_counting_function=None,
        logdir="./runs",
        log_basename="fed_avg",
        seed=None,
    ):
        self._seed = seed if seed is not None else int(time.time())
        self.training_dataloaders_with_memory = [
            DataLoaderWithMemory(dl) for dl in training_dataloaders
        ]
        self.training_sizes = [len(dl) for dl in self.training_dataloaders_with_memory]
        self.total_number_of_samples = sum(self.training_sizes)
        self.models_list = [
            _Model(
                model=model,
                optimizer_class=optimizer_class,
                lr=learning_rate,
                train_dl=dl,
                dp_target_epsilon=dp_target_epsilon,
                dp_target_delta=dp_target_delta,
                dp_max_grad_norm=dp_max_grad_norm,
                loss=loss,
                nrounds=nrounds,
                log=log,
                client_id=i,
                log_period=log_period,
                log_basename=log_basename,
                logdir=logdir,
                seed=self._seed,
            )
            for i, dl in enumerate(training_dataloaders)
        ]
        self.nrounds = nrounds
        self.num_updates = num_updates
        self.num_clients = len(self.training_sizes)
        self.bits_counting_function = bits_counting_function

    def _local_optimization(self, _model, dataloader_with_memory):
        _model._local_train(dataloader_with_memory, self.num_updates)

    def _aggregate(self, local_updates):
        """The size-weighted mean of the clients' updates (numpy, in FLamby's order: the sum of
        ``update * n_samples`` over clients, then divided by the total)."""
        averaged = []
        for index in range(len(local_updates[0]["updates"])):
            total = sum([entry["updates"][index] * entry["n_samples"] for entry in local_updates])
            total /= float(self.total_number_of_samples)
            averaged.append(total)
        return averaged

    def perform_round(self):
        local_updates = []
        for _model, loader, size in zip(
            self.models_list,
            self.training_dataloaders_with_memory,
            self.training_sizes,
            strict=True,
        ):
            before = _model._get_current_params()
            self._local_optimization(_model, loader)
            after = _model._get_current_params()
            updates = [new - old for new, old in zip(after, before, strict=True)]
            for param, old in zip(
                _model.model.parameters(), before, strict=True
            ):  # back to the round's start
                param.data = torch.from_numpy(old).to(param.device)
            if self.bits_counting_function is not None:
                self.bits_counting_function(updates)
            local_updates.append({"updates": updates, "n_samples": size})
        averaged = self._aggregate(local_updates)
        for _model in self.models_list:
            _model._update_params(averaged)

    def run(self):
        for _ in range(self.nrounds):
            self.perform_round()
        return [m.model for m in self.models_list]
