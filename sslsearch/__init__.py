"""sslsearch: hyperparameter search for self-supervised representation learning."""

__version__ = "0.1.0"
