"""MLflow tracking for fedplug: the ``mlflow`` tracker
(:class:`fedplug_mlflow.tracker.MlflowTracker`), turned on with ``Experiment(tracking="mlflow")``."""
