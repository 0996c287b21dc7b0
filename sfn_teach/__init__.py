"""sfn-teach: saddle-free Newton optimisation by a series of Hessian-vector products.

A small PyTorch library (and the notebooks in ``notebooks/`` that teach with it) for the method
of Oldewage, Clarke and Hernández-Lobato, *Series of Hessian-Vector Products for Tractable
Saddle-Free Newton Optimisation of Neural Networks*, TMLR 2024 (arXiv 2310.14901).

The package is flat (``from sfn_teach.toys import run_trajectory``), in three layers; a
layer imports only from itself and the layers above it (``tests/test_structure.py`` checks that
the method imports nothing from the other two). Modules, each with one job:

**The method**

- :mod:`sfn_teach.series`: the series coefficients, the truncated series on any operator
  ``v ↦ Hv``, Wynn's ε acceleration, the spectral filter and exact eigen-references;
- :mod:`sfn_teach.hvp`: matrix-free Hessian-vector products, the curvature operator of a step
  (``CurvatureOperator``) and power iteration;
- :mod:`sfn_teach.scale`: how ``SeriesSFN`` chooses the scale ``V`` of its series;
- :mod:`sfn_teach.update`: the update every curvature optimiser shares, as pure functions, and
  their base class ``CurvatureOptimizer``;
- :mod:`sfn_teach.optim`: the ``SeriesSFN`` optimiser; ``ExactSFN``, ``Newton`` for small problems;
- :mod:`sfn_teach.kfac`: K-FAC (Martens & Grosse 2015) from ASDL, with an exact ``state_dict``;
- :mod:`sfn_teach.registry`: every optimiser by name (the library's and ``torch.optim``'s),
  with its label, defaults and the closure it takes;
- :mod:`sfn_teach.models`: the MLP and the CIFAR ResNet-18;
- :mod:`sfn_teach.checks`: argument checks and the package's errors (``SfnTeachError``);

**The classroom**

- :mod:`sfn_teach.landscapes`: the 2-D test functions, their critical points and derivatives;
- :mod:`sfn_teach.toys`: the classroom's optimisers on them, trajectories, one-step partial sums;
- :mod:`sfn_teach.toy_steps`: every classroom optimiser's update in closed form on a 2-D toy;
- :mod:`sfn_teach.plots`, :mod:`sfn_teach.series_plots`, :mod:`sfn_teach.plot_style`: the
  matplotlib figures of the toys, the trajectories and the series, and their shared style;
- :mod:`sfn_teach.widgets`, :mod:`sfn_teach.widget_parts`, :mod:`sfn_teach.live_plot`: the
  interactive explorers, their shared controls and their bqplot figures;
- :mod:`sfn_teach.benchmark_panel`: the panel that configures, runs and shows a benchmark;
- :mod:`sfn_teach.exercises`: checks of the notebooks' exercises, with hints;
- :mod:`sfn_teach.plateaus`: plateaus of small networks near the saddle at the origin;
- :mod:`sfn_teach.plateau_tuning`: every optimiser tuned on a plateau, measured at the escape;

**The experiments**

- :mod:`sfn_teach.data`: the datasets, their checksums and the batches as a function of
  (seed, step);
- :mod:`sfn_teach.files`: SHA-256 checksums and atomic writes;
- :mod:`sfn_teach.cifar10`: the CIFAR-10 archive: download, verification, parsing, cache;
- :mod:`sfn_teach.cifar10_generated`: generated CIFAR-format archives for tests and previews;
- :mod:`sfn_teach.images`: image tensors: normalisation, crop and flip, validation split;
- :mod:`sfn_teach.train`: the training loop, evaluation, cost accounting and exact resume;
- :mod:`sfn_teach.cost`: work in gradient-equivalents (the trainer's ``CostModel``);
- :mod:`sfn_teach.library_step`: a step of ``torch.optim``'s and other libraries' optimisers,
  counted, and undone if it is not finite;
- :mod:`sfn_teach.diagnostics`: the curvature diagnostics of a small model;
- :mod:`sfn_teach.checkpoint`: crash-safe checkpoints and random-generator state;
- :mod:`sfn_teach.device`: devices, precision, timing;
- :mod:`sfn_teach.cpu`: how torch's threads share and wait on a CPU;
- :mod:`sfn_teach.distributed`: data parallelism (the rank-averaged operator, gradient means);
- :mod:`sfn_teach.bench`: benchmark configs, runs, reports, tuning and the CLI.
"""

from .cpu import apply_wait_policy

apply_wait_policy()  # before anything imports torch: how its OpenMP threads wait (sfn_teach.cpu)

__version__ = "0.1.0"
