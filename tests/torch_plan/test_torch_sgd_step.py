"""Plain SGD through ``fedplug.Optimizer`` on a torch model takes the adapter's in-place step:
the same parameters, bit for bit, as declearn's own path, and the rates move on as declearn's."""

from __future__ import annotations

import pytest
import torch

from fedplug import Optimizer, get_plugin_manager
from fedplug.plugins import active


def pair():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    twin = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    twin.load_state_dict(model.state_dict())
    return model, twin


@pytest.mark.parametrize("lr", [0.1, ("exponential-decay", {"base": 0.3, "rate": 0.5})])
def test_the_fast_sgd_step_is_declearns_bit_for_bit(lr):
    with active(get_plugin_manager()):
        fast, slow = Optimizer(lr=lr), Optimizer(lr=lr)
    model, twin = pair()
    twin_adapter = slow.adapter(twin)
    x = torch.randn(16, 7)
    for step in range(6):
        for net in (model, twin):
            net.zero_grad(set_to_none=True)
            if step == 3:  # a step where a parameter has no gradient
                net[2](torch.tanh(x[:, :5])).pow(2).mean().backward()
            else:
                net(x).pow(2).mean().backward()
        fast.step(model)
        slow._optim.apply_gradients(twin_adapter, twin_adapter.gradients())  # declearn's path
        for (name, a), b in zip(
            model.state_dict().items(), twin.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), (step, name)
    assert fast._optim.lrate == slow._optim.lrate  # the schedule moved on in both


def test_anything_beyond_plain_sgd_takes_declearns_path():
    with active(get_plugin_manager()):
        optimizers = [
            Optimizer(lr=0.1, modules=["momentum"]),
            Optimizer(lr=0.1, regularizers=[("ridge", {"alpha": 0.5})]),
            Optimizer(lr=0.1, decay=0.01),
        ]
    for optimizer in optimizers:
        model, _ = pair()
        adapter = optimizer.adapter(model)
        calls = []
        adapter.sgd_step = lambda lr, calls=calls: calls.append(lr)
        model(torch.randn(4, 7)).sum().backward()
        before = [p.clone() for p in model.parameters()]
        optimizer.step(model)
        assert calls == []
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
