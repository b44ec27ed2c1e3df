"""The ``spendstream`` command line, the demo and the embedded local stack.
"""
