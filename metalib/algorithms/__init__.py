"""Meta-learning algorithms, one module each. Import the module, then call it:
``from metalib.algorithms import maml`` and ``maml.adapt(...)``."""
