"""Quick search for the auxiliary head (paper Section 3.5, Eqs. 6-8; zh extended version Fig. 5).

One training run with *all* candidate heads in parallel on the same base model:

* every candidate i has its own auxiliary head ``h^i`` (depth 1 by default) and its own projection
  heads; the base model's representation is passed through a *separate* projection per candidate,
  so the candidates do not interfere through a shared projection (zh Sec. 3.5: "the base model's
  representation z_{1/2}^b is fed to different projection heads when paired with different
  auxiliary heads");
* per candidate the HSSL loss of Eq. 6, ``L^{hi} = L(z1^{hi}, z2^b) + L(z1^{hi}, z2^{hi})`` (the
  same terms, centering and temperatures as a single-head HSSL run: one
  :class:`jhssl.methods.SelfDistillationLoss` per candidate, each with its own centers);
* the total loss is the mean over candidates (Eq. 7);
* the shipped search recipes (``configs/search_*.yaml``) set ``hssl.patch_level: none``: Eq. 6 has
  image-level terms only, and iBOT's patch terms would need a patch projection per base/head pair
  (12 for six heads), which makes a step ~3.9x a one-head step instead of the paper's 1.4x
  (``benchmarks/run.py``). Any ``patch_level`` works;
* after training, ``D_i = KL(z1^b || z1^{hi})`` (Eq. 8) from the teacher probabilities of the base
  (through the projection paired with head i) and of head i, averaged over held-out images; the
  recommended head is ``argmax_i D_i``.

The search model is a :mod:`jhssl.methods`-compatible method object (``student``, ``teacher``,
``loss``, ``compute_loss(crops, masks, epoch)``, ``ema_update``), so it is trained by the normal
training loop, ``jhssl.train.train(cfg, method=search)``: same optimiser, schedules, clipping,
EMA, checkpoints (``resume``), logs and MPI data parallelism as a single-head run. Under mpirun
the held-out images for D are sharded over the ranks (rank r measures images r, r+W, ...) and the
per-head sums and the image count are totalled with ``jhssl.dist.all_reduce_np``.

One module per job: :mod:`.model` (the search network/method and its config checks),
:mod:`.measure` (D_i and the ranking), :mod:`.report` (result files), :mod:`.timing` (the
search-vs-single-head timing harness) and :mod:`.run` (``run_search``, the whole search).
"""
from .measure import (discrepancies, final_teacher_temp, heldout_batches, rank_heads,  # noqa: F401
                      recommended_line, shard_indices)
from .model import SearchMethod, SearchNetwork, build_search, candidate_config, check_search_config  # noqa: F401
from .report import write_results  # noqa: F401
from .run import run_search  # noqa: F401
from .timing import time_search_vs_single  # noqa: F401

__all__ = ["SearchNetwork", "SearchMethod", "build_search", "check_search_config", "candidate_config",
           "shard_indices", "heldout_batches", "discrepancies", "rank_heads", "write_results", "run_search",
           "time_search_vs_single"]
