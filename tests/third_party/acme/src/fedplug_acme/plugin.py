"""The entry point: every contribution is an import path, so loading the plugin imports nothing
(not even declearn, which the optimizer pair needs)."""

from fedplug import hookimpl


@hookimpl
def fedplug_register_aggregators(register):
    register("acme-mean", "fedplug_acme.parts:AcmeMean")


@hookimpl
def fedplug_register_training_plans(register):
    register("acme-logreg", "fedplug_acme.parts:AcmePlan")


@hookimpl
def fedplug_register_dataset_types(register):
    register("acme-synthetic", "fedplug_acme.parts:load_synthetic")


@hookimpl
def fedplug_register_optimizer_modules(register):
    register("acme-drift-client", "fedplug_acme.drift:DriftClient")
    register("acme-drift-server", "fedplug_acme.drift:DriftServer")


@hookimpl
def fedplug_register_transports(register):
    register("acme-relay", "fedplug_acme.parts:relay")


@hookimpl
def fedplug_register_commands(register):
    register("acme", "fedplug_acme.parts:acme_command")
