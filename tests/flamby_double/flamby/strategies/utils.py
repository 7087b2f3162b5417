"""The helpers of FLamby's strategies (``flamby.strategies.utils``).

- :class:`DataLoaderWithMemory`: a DataLoader read batch by batch forever. Its iterator lives
  across rounds, and a new one is made when it runs out, so an epoch may span two rounds. With
  ``shuffle=True`` and no generator, torch draws from its global generator twice per iterator:
  the iterator's base seed when it is made, the sampler's permutation seed at its first batch.
- :class:`_Model`: one client's copy of the model with its optimizer, trained ``num_updates``
  batches at a time (plain, with FedProx's proximal term, or with Scaffold's correction), its
  parameters read as numpy arrays and shifted in place by numpy updates.
"""

from __future__ import annotations

import copy

import torch


class DataLoaderWithMemory:
    """``get_samples()``: the next batch of ``dataloader``, starting a new pass when one ends."""

    def __init__(self, dataloader):
        self._dataloader = dataloader
        self._iterator = iter(dataloader)

    def _reset_iterator(self):
        self._iterator = iter(self._dataloader)

    def __len__(self):
        return len(self._dataloader.dataset)

    def get_samples(self):
        try:
            X, y = next(self._iterator)
        except StopIteration:
            self._reset_iterator()
            X, y = next(self._iterator)
        return X, y


def _unsupported_dp(epsilon, delta, max_grad_norm):
    if (epsilon, delta, max_grad_norm) != (None, None, None):
        raise NotImplementedError(
            "the FLamby double has no differential privacy (FLamby uses opacus for it)"
        )


class _Model:
    """A client's model, optimizer (``optimizer_class(parameters, lr)``) and loss."""

    def __init__(
        self,
        model,
        train_dl,
        optimizer_class,
        lr,
        loss,
        nrounds,
        client_id=0,
        dp_target_epsilon=None,
        dp_target_delta=None,
        dp_max_grad_norm=None,
        log=False,
        log_period=100,
        log_basename="local_model",
        logdir="./runs",
        seed=None,
    ):
        _unsupported_dp(dp_target_epsilon, dp_target_delta, dp_max_grad_norm)
        self._device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        self.model = copy.deepcopy(model).to(self._device)
        self._train_dl = train_dl
        self._optimizer = optimizer_class(self.model.parameters(), lr)
        self._loss = copy.deepcopy(loss)
        self.nrounds = nrounds
        self.client_id = client_id
        self.num_batches_seen = 0

    def _train_batches(self, dataloader_with_memory, num_updates, objective):
        """``num_updates`` optimizer steps on ``objective(prediction, y)``, FLamby's step order:
        forward, backward, ``step()``, then ``zero_grad()``."""
        self.model = self.model.train()
        for _ in range(num_updates):
            X, y = dataloader_with_memory.get_samples()
            X, y = X.to(self._device), y.to(self._device)
            objective(self.model(X), y).backward()
            self._optimizer.step()
            self._optimizer.zero_grad()
            self.num_batches_seen += 1

    def _local_train(self, dataloader_with_memory, num_updates):
        self._train_batches(dataloader_with_memory, num_updates, self._loss)

    def _prox_local_train(self, dataloader_with_memory, num_updates, mu):
        """FedProx: the loss plus ``mu / 2`` times the squared distance to the round's start."""
        start = copy.deepcopy(self.model)

        def objective(prediction, y):
            loss = self._loss(prediction, y)
            if mu > 0.0:
                loss += mu / 2 * compute_model_diff_squared_norm(start, self.model)
            return loss

        self._train_batches(dataloader_with_memory, num_updates, objective)

    def _local_train_with_correction(self, dataloader_with_memory, num_updates, correction_state):
        """Scaffold: the loss minus ``<correction, parameters>``, i.e. the gradient minus the
        correction."""

        def objective(prediction, y):
            loss = self._loss(prediction, y)
            loss -= compute_dot_product(self.model, correction_state)
            return loss

        self._train_batches(dataloader_with_memory, num_updates, objective)

    @torch.no_grad()
    def _get_current_params(self):
        """The parameters as new numpy arrays (``parameters()`` order)."""
        return [p.cpu().detach().clone().numpy() for p in self.model.parameters()]

    @torch.no_grad()
    def _update_params(self, new_params):
        """Add the numpy arrays ``new_params`` to the parameters, in place."""
        for param, update in zip(self.model.parameters(), new_params, strict=True):
            param.data += torch.from_numpy(update).to(param.device)


def compute_model_diff_squared_norm(model1, model2):
    """Sum over parameters of the squared entries of ``model1 - model2``."""
    pairs = zip(list(model1.parameters()), list(model2.parameters()), strict=True)
    return sum([torch.sum((a - b) ** 2) for a, b in pairs])


def compute_dot_product(model, params):
    """Sum over parameters of ``parameter * params[i]`` (``params`` moved to the device)."""
    device = next(model.parameters()).device
    return sum(
        [torch.sum(m * p.to(device)) for m, p in zip(model.parameters(), params, strict=True)]
    )
