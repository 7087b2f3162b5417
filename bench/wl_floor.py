"""The "no framework" floor: one workload of BENCHMARKS.md as a plain torch loop, in one process.

Run by ``bench/workloads.py`` in a fresh interpreter (``python bench/wl_floor.py W1``); prints one
JSON line. Written the way a user without a framework would: a loop over clients; one model that
each client loads the global weights into, with its ``torch.optim.SGD``; batches by slicing the
client's tensors with a seeded ``torch.randperm`` (the seeds fedplug derives per round, so both
systems make the same updates and end with the same model); the clients' state dicts collected,
then averaged weighted by sample counts; W1's accuracy evaluated once, after the last round.

Tensor slicing, not a ``DataLoader`` over a ``TensorDataset``: a DataLoader collates batches
sample by sample, which would make the floor slower and the ratios to it kinder to fedplug.
"""

import time

T_START = time.monotonic()

import sys  # noqa: E402

import torch  # noqa: E402
import wl_common  # noqa: E402
from torch import nn  # noqa: E402

T_IMPORTED = time.monotonic()


def mlp(layers: list[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (built as the fedplug plan does)."""
    modules: list[nn.Module] = []
    for i in range(1, len(layers)):
        if i > 1:
            modules.append(nn.ReLU())
        modules.append(nn.Linear(layers[i - 1], layers[i]))
    return nn.Sequential(*modules)


def main() -> None:
    workload, _, _ = wl_common.child_args(sys.argv[1:])
    recipe = wl_common.RECIPES[workload]
    seed = wl_common.SEED

    # data: one (x, y) tensor pair per client, plus the held-out splits for W1
    clients: list[tuple[torch.Tensor, torch.Tensor]] = []
    tests: list[tuple[torch.Tensor, torch.Tensor]] = []
    if workload == "W1":
        x, y = wl_common.breast_cancer()
        for idx in wl_common.w1_node_indices(y, seed):
            train, test = wl_common.holdout(len(idx), recipe.test_ratio, seed)
            xn, yn = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
            clients.append((xn[train], yn[train]))
            tests.append((xn[test], yn[test]))
    else:
        clients = [
            (torch.from_numpy(x), torch.from_numpy(y))
            for x, y in wl_common.synthetic_clients(workload)
        ]

    torch.manual_seed(seed)
    model = mlp(recipe.layers)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    sizes = [len(cx) for cx, _ in clients]
    total = sum(sizes)

    run_start = time.monotonic()
    round_ends = []
    for r in range(recipe.rounds):
        round_seed = seed + wl_common.ROUND_SEED_STEP * (r + 1)
        states = []
        for cx, cy in clients:
            model.load_state_dict(global_state)
            model.train()
            generator = torch.Generator().manual_seed(round_seed)
            n, steps, done = len(cx), recipe.steps(len(cx)), 0
            while done < steps:
                order = torch.randperm(n, generator=generator)
                for start in range(0, n, recipe.batch_size):
                    batch = order[start : start + recipe.batch_size]
                    optimizer.zero_grad()
                    loss_fn(model(cx[batch]), cy[batch]).backward()
                    optimizer.step()
                    done += 1
                    if done == steps:
                        break
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        global_state = {
            k: sum(state[k] * (size / total) for state, size in zip(states, sizes, strict=True))
            for k in global_state
        }
        round_ends.append(time.monotonic())

    model.load_state_dict(global_state)
    accuracy = None
    if tests:  # accuracy of the final global model on the union of the held-out splits
        model.eval()
        with torch.no_grad():
            tx, ty = torch.cat([t[0] for t in tests]), torch.cat([t[1] for t in tests])
            accuracy = float((model(tx).argmax(dim=1) == ty).float().mean())
    done_mono = time.monotonic()

    flat = torch.cat([v.double().flatten() for v in global_state.values()])
    wl_common.report(
        workload=workload,
        system="floor",
        workers=1,
        torch_threads=torch.get_num_threads(),
        start_mono=T_START,
        imported_mono=T_IMPORTED,
        run_start_mono=run_start,
        round_ends_mono=round_ends,
        done_mono=done_mono,
        accuracy=accuracy,
        param_l2=float(flat.norm()),
        param_sum=float(flat.sum()),
    )


if __name__ == "__main__":
    main()
