"""sfn-teach: saddle-free Newton optimisation by a series of Hessian-vector products.

A small PyTorch library (and the notebooks in ``notebooks/`` that teach with it) for the method
of Oldewage, Clarke and Hernández-Lobato, *Series of Hessian-Vector Products for Tractable
Saddle-Free Newton Optimisation of Neural Networks*, TMLR 2024 (arXiv 2310.14901).

Modules, each with one job:

- :mod:`sfn_teach.series`: the series coefficients, the truncated series on any operator
  ``v ↦ Hv``, Wynn's ε acceleration, the spectral filter and exact eigen-references;
- :mod:`sfn_teach.hvp`: matrix-free Hessian-vector products, the curvature operator of a step
  (``CurvatureOperator``) and power iteration;
- :mod:`sfn_teach.update`: the update every curvature optimiser shares, as pure functions, and
  their base class ``CurvatureOptimizer``;
- :mod:`sfn_teach.scale`: how ``SeriesSFN`` chooses the scale ``V`` of its series;
- :mod:`sfn_teach.optim`: the ``SeriesSFN`` optimiser; ``ExactSFN``, ``Newton`` for small problems.
"""

from .cpu import apply_wait_policy

apply_wait_policy()  # before anything imports torch: how its OpenMP threads wait (sfn_teach.cpu)

__version__ = "0.1.0"
