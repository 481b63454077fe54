"""The programs behind `pqm`, train.py and evaluate.py."""
