import json

from fedplug import Experiment

exp = Experiment(
    tags=["breast-cancer"],
    training_plan="torch-mlp",
    model_args={"layers": [30, 64, 2]},
    training_args={"epochs": 1, "batch_size": 16, "test_ratio": 0.2},
    round_limit=20,
    seed=0,
    transport="grpc",
    transport_options={
        "server": "0.0.0.0:50051",
        "tls": "certs",  # server.pem/server.key, and credentials.json for the nodes
        "wait_nodes": 2,  # or ["hospital-1", "hospital-2"]
        "wait_timeout": 600,
        "request_timeout": 3600,  # seconds a node may take for one request
    },
    on_node_failure="skip",  # or "fail"
    min_nodes=1,
    checkpoint_dir="checkpoints",
)
with exp:
    history = exp.run()

last = history[-1]
for node, metrics in last["validation"].items():
    print(f"{node}: accuracy {metrics['accuracy']:.3f} on {metrics['n_samples']} test samples")
overall = last["validation_global"]
print(f"global: accuracy {overall['accuracy']:.3f} on {overall['n_samples']} test samples")
exp.save_model("model.npz")
with open("history.json", "w") as file:
    json.dump(history, file, indent=2)
print(f"{len(history)} rounds; model in model.npz, every round's metrics in history.json")
