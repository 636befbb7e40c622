"""The interface every method implements; the trainer, checkpoints, MPI code and metrics use only this.

A method object (built by ``jhssl.methods.build_model(cfg)``) holds:

* ``spec``: its :class:`jhssl.methods.registry.MethodSpec` (views/masks, EMA teacher, config keys);
* ``student``: the trained network (base model, HSSL auxiliary head, projections, any extra module
  such as a predictor or a decoder); the optimizer trains its non-stop-grad Vars;
* ``teacher``: the EMA copy (None for a method without one, e.g. MAE);
* ``loss``: an ``nn.Module`` holding every other piece of training state (DINO/iBOT centers, the
  MoCo key queue). Checkpoints store ``student``, ``teacher`` and ``loss`` by name; at start every
  Var of the three is broadcast from rank 0 (:meth:`synced_modules`). Batch statistics that must
  agree across ranks go through Jittor's synchronised BatchNorm (``nn.BatchNorm(sync=True)``,
  the default), and a method gathers what else it needs inside ``compute_loss``
  (``jhssl.dist.all_gather_var``, ``all_reduce_mean``).

Per iteration the trainer calls ``compute_loss(crops, masks, epoch)`` (a dict: ``loss`` plus the
logged loss parts, named ``<term>_<network>``), backward + step, then ``ema_update(momentum)``
with ``momentum_schedule(...)[it]`` when the method has a teacher. Once per epoch, for an HSSL run,
``jhssl.metrics.network_discrepancy`` asks ``discrepancy_batch`` for the base/head discrepancy.
"""
from jhssl import bootstrap  # noqa: F401

import jittor as jt

from .registry import method_spec


class Method:
    """Defaults shared by the methods: EMA teacher pairing by parameter name, no frozen parameters."""

    # Set by the method's class: the registry name
    name = None
    # the per-epoch base/head discrepancy needs one auxiliary head (the search has several)
    per_epoch_discrepancy = True

    def __init__(self, cfg, student, teacher, loss):
        self.cfg = cfg
        if self.name is None:  # a class shared by several methods (the head search) takes cfg's
            self.name = cfg.method
        self.spec = method_spec(self.name)
        if self.spec.ema_teacher != (teacher is not None):
            raise ValueError(f"method {self.name}: the registry says ema_teacher={self.spec.ema_teacher} but "
                             f"the method was built {'with' if teacher is not None else 'without'} a teacher")
        self.student, self.teacher, self.loss = student, teacher, loss
        if teacher is not None:
            # The teacher never gets gradients: its Vars are stop_grad and the optimizer only sees
            # student parameters; it moves by EMA only.
            for p in teacher.parameters():
                p.stop_grad()
            # As DINO's main_dino.py: the teacher is never switched to eval mode while training (only
            # evaluations are), so a BatchNorm in it (ResNet base, ResNet head) normalises with the
            # batch statistics of the teacher's own forward (over all ranks: Jittor's BatchNorm is
            # synchronised under MPI, as DINO's SyncBatchNorm), and its running statistics come from
            # those forwards, not from the EMA (see :meth:`param_pairs`).
            teacher.train()
        self._pairs = None
        self._all_pairs = None

    # -- what the trainer asks -------------------------------------------------------------------
    def compute_loss(self, crops, masks, epoch):
        raise NotImplementedError

    def momentum_schedule(self, niter):
        """Per-iteration EMA momentum (``optim.momentum_teacher`` -> 1, cosine), or None."""
        if self.teacher is None:
            return None
        from jhssl.schedules import cosine_scheduler
        return cosine_scheduler(self.cfg.optim.momentum_teacher, 1.0, self.cfg.epochs, niter)

    def param_groups(self):
        """The optimizer's parameter groups (default DINO's: no weight decay on biases and norms)."""
        from jhssl.optim import param_groups
        return param_groups(self.student)

    def frozen_parameters(self, epoch):
        """ids of student parameters the optimizer skips in ``epoch`` (e.g. DINO's last layer)."""
        return set()

    def synced_modules(self):
        """Everything rank 0 broadcasts at start (and a checkpoint restores)."""
        return tuple(m for m in (self.student, self.teacher, self.loss) if m is not None)

    def eval_network(self, which="teacher"):
        """The network k-NN and the discrepancy read (the student when there is no teacher)."""
        return self.teacher if (which == "teacher" and self.teacher is not None) else self.student

    def discrepancy_batch(self, net, x, epoch):
        """Per-image base/head discrepancy of one batch: ``(d_rows (B,), base_feats, head_feats)``
        numpy arrays (features give CKA and Procrustes). See the method's docstring for what D is."""
        raise NotImplementedError(f"method {self.name} does not define a base/head discrepancy")

    # -- teacher EMA -----------------------------------------------------------------------------
    def param_pairs(self):
        """(student Var, teacher Var) of every *trained* student parameter the teacher also holds
        (iBOT's ``names_common``): student-only modules (a predictor) have no teacher counterpart.

        Buffers are not averaged, as in DINO's EMA over ``student.parameters()`` (PyTorch parameters,
        not buffers): BatchNorm running statistics (stop-grad Vars in Jittor) are updated by the
        teacher's own forward passes. The other stop-grad Vars (a normalised last layer's fixed
        ``weight_g``, a frozen patch embedding, Swin's index tables) are equal in both networks and
        never change, so leaving them out changes nothing."""
        if self._pairs is None:
            self._pairs = [(s, t) for s, t in self._same_name_pairs() if not s.is_stop_grad()]
        return self._pairs

    def _same_name_pairs(self):
        if self._all_pairs is None:
            sp = dict(self.student.named_parameters())
            tp = dict(self.teacher.named_parameters())
            pairs = []
            for name, tv in tp.items():
                if name in sp:
                    if tuple(sp[name].shape) != tuple(tv.shape):
                        raise ValueError(f"student/teacher shape mismatch for '{name}': "
                                         f"{tuple(sp[name].shape)} vs {tuple(tv.shape)}")
                    pairs.append((sp[name], tv))
            self._all_pairs = pairs
        return self._all_pairs

    def copy_student_to_teacher(self):
        """The teacher starts as the student: every Var, buffers included (DINO:
        ``teacher.load_state_dict(student.state_dict())``)."""
        for s, t in self._same_name_pairs():
            t.update(s.detach().clone().stop_grad())

    def ema_update(self, momentum):
        """teacher <- m * teacher + (1 - m) * student on the trained parameters (no gradient flows)."""
        m = float(momentum)
        with jt.no_grad():
            for s, t in self.param_pairs():
                t.update((t * m + s.detach() * (1.0 - m)).stop_grad())
