"""Kascade: hybrid LLM inference on Kubernetes.

Local small models answer first; only what they cannot answer well is escalated to
cloud experts, under money budgets that are never exceeded.
"""

__version__ = "0.1.0"
