"""Omniglot for few-shot learning: archives, the 28×28 cache, class splits, episodes.

- :mod:`metalib.data.archives`: finding, downloading and checking the two zips;
- :mod:`metalib.data.omniglot`: the whole set as one uint8 tensor, cached;
- :mod:`metalib.data.splits`: the ``vinyals`` and ``lake`` class splits, with rotations;
- :mod:`metalib.data.episodes`: N-way K-shot meta-batches by tensor indexing.

Taught in ``05_omniglot_episodes``.
"""
