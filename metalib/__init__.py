"""metalib: the helper library of an interactive course on meta-learning.

The notebooks in ``notebooks/`` teach; this package computes. Importing it has no side
effects: the environment is read only by :mod:`metalib.runtime`, and only when asked.
"""

__version__ = "0.1.0"
