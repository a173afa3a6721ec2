"""The research target (template train.py) and the fixed harness that measures it."""
