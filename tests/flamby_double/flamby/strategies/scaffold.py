"""FLamby's Scaffold strategy (``flamby.strategies.Scaffold``)."""

from __future__ import annotations

import torch

from flamby.strategies.fed_avg import FedAvg


class Scaffold(FedAvg):
    """SCAFFOLD as FLamby writes it (clients on SGD, every client in every round).

    Each client keeps the state its last round ended at (scaled by the server rate) and a
    correction, both numpy/torch float32. Before training, the correction grows by
    ``(server state - client's last state) / (server_lr * client_lr * num_updates)``; training
    subtracts it from every gradient; the client's new state is ``server_lr * trained + (1 -
    server_lr) * server state``, and its update that state minus the server state, averaged as in
    FedAvg.
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
        server_learning_rate=1,
        log=False,
        log_period=100,
        bits_counting_function=None,
        logdir="./runs",
        log_basename="scaffold",
    ):
        assert optimizer_class == torch.optim.SGD, "Only SGD for client optimizer with Scaffold"
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
            log_basename=log_basename,
            logdir=logdir,
        )
        self.previous_client_state_list = [m._get_current_params() for m in self.models_list]
        self.client_corrections_state_list = [
            [torch.zeros_like(torch.from_numpy(p)) for p in m._get_current_params()]
            for m in self.models_list
        ]
        self.client_lr = learning_rate
        self.server_lr = server_learning_rate

    def _local_optimization(self, _model, dataloader_with_memory, correction_state):
        _model._local_train_with_correction(
            dataloader_with_memory, self.num_updates, correction_state
        )

    def perform_round(self):
        local_updates, states, corrections = [], [], []
        scale = self.server_lr * self.client_lr * self.num_updates
        for _model, loader, size, last_state, last_correction in zip(
            self.models_list,
            self.training_dataloaders_with_memory,
            self.training_sizes,
            self.previous_client_state_list,
            self.client_corrections_state_list,
            strict=True,
        ):
            server = _model._get_current_params()
            correction = [
                c + torch.from_numpy((p - q) / scale)
                for c, p, q in zip(last_correction, server, last_state, strict=True)
            ]
            corrections.append(correction)
            self._local_optimization(_model, loader, correction)
            trained = _model._get_current_params()
            state = [
                self.server_lr * new + (1 - self.server_lr) * old
                for new, old in zip(trained, server, strict=True)
            ]
            states.append(state)
            updates = [new - old for new, old in zip(state, server, strict=True)]
            for param, old in zip(_model.model.parameters(), server, strict=True):
                param.data = torch.from_numpy(old).to(param.device)
            if self.bits_counting_function is not None:
                self.bits_counting_function(updates)
            local_updates.append({"updates": updates, "n_samples": size})
        self.previous_client_state_list = states
        self.client_corrections_state_list = corrections
        averaged = self._aggregate(local_updates)
        for _model in self.models_list:
            _model._update_params(averaged)
