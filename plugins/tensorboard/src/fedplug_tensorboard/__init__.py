"""TensorBoard tracking for fedplug: the ``tensorboard`` tracker
(:class:`fedplug_tensorboard.tracker.TensorBoardTracker`), turned on with
``Experiment(tracking="tensorboard")``."""
