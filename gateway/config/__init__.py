"""Loading the configuration: YAML files (with the place of every key) → validated, checked models."""
