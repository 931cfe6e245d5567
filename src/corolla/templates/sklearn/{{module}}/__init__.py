"""Federated logistic regression on the digits data set with scikit-learn."""
