"""Federated training of a small PyTorch MLP on the digits data set."""
