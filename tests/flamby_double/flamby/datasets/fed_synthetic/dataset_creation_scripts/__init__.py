"""Fed-Synthetic's creation scripts; ``dataset_location.yaml`` is written here by ``download``."""
