"""Federated linear regression in plain numpy."""
