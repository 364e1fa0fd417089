"""Data capture: sampling invocations and writing them in SageMaker's capture format."""
