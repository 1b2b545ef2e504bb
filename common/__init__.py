"""Torch code that both stages share, below them (the stages never import each other).

`distributed`: process-group rank, collectives and announcements for data-parallel training;
`torch_utils`: device resolution, weights-only checkpoint I/O, and the mean-of-embeddings bag that
both towers and the ranker use. This layer may import `features` (atomic writes, integrity errors,
the torch-free distributed environment), never a stage.
"""
