"""MoCo v3 (Chen, Xie & He, ICCV 2021) with or without HSSL (paper Appendix D, Eq. 11).

Baseline (``hssl: null``), as the official code (facebookresearch/moco-v3, ``moco/builder.py``):
queries ``q = predictor(projector(f(x)))`` of the online network, keys ``k = projector_m(f_m(x))``
of the momentum network, ``L = ctr(q1, k2) + ctr(q2, k1)`` with
``ctr(q, k) = 2 tau * CrossEntropy(q_n k_n^T / tau, positives)`` on L2-normalised rows.

HSSL (Eq. 11): the base and the head each have a projector and a predictor; the queries are the
online base and head outputs of one view (z2b, z2h), the key is the momentum network's *head*
output of the other view (z1h); symmetrised over the two views as MoCo v3 does::

    L = ctr(z2b, z1h) + ctr(z2h, z1h) + ctr(z1b, z2h) + ctr(z1h, z2h)

logged as ``ctr_base`` (the base's two terms) and ``ctr_head``.

Negatives (``mocov3.negatives``): ``batch`` (MoCo v3: every other key of the global batch, the
keys gathered over the MPI ranks; the positive of query i is key i), ``queue`` (a FIFO memory bank of
``mocov3.queue_size`` past keys, MoCo v1/v2 and the paper's "stored in a memory bank": logits
``[q.k+, q.queue]``, positive first), or ``batch+queue`` (both: ``[q.K_batch, q.queue]``). The default
is ``batch``: Table VI(b)'s MoCo v3 row is the official recipe, which has no queue, and a queue of keys
from an older momentum network is the design MoCo v3 dropped. The queue holds the L2-normalised keys
(the HSSL target, z1h; the base's keys for the baseline) of both views of every step, gathered from
all ranks in rank order (the global batch's order), newest first; it starts as random unit vectors
(MoCo v2) and lives in ``method.loss`` (checkpointed, restored exactly, broadcast from rank 0).

Everything else follows the official ViT recipe (CONFIG.md, ViT-Small): projector 3 layers and predictor
2 layers, hidden 4096, out 256, bias-free Linear + BatchNorm + ReLU, the last layer followed by a
BatchNorm without affine (synchronised over ranks: Jittor's ``BatchNorm(sync=True)``); the momentum
network has no predictor and runs with batch statistics (train mode), as the official model does;
tau 0.2; momentum 0.99 -> 1 on a cosine (the trainer's schedule); the ViT's patch embedding is frozen
(``--stop-grad-conv1``: a random projection, for stability); AdamW with weight decay on every
parameter (official ``torch.optim.AdamW(model.parameters(), weight_decay=0.1)``).
Not reproduced: the official ViT's fixed 2-D sin-cos position embedding (jhssl's ViT keeps its
learned one) and its patch embedding's Xavier init.

Per-epoch discrepancy D (HSSL runs): ``KL(p_b || p_h)`` with ``p_x(i, .)`` the softmax over the other
images of the batch of ``cos(z_x[i], z_x[j]) / tau`` for the momentum network's base and head
projections (:func:`jhssl.metrics.similarity_kl_rows`). InfoNCE's prediction for an image is exactly
such a distribution over the other samples, so this is Eq. 5 with the contrastive method's own
distribution in place of the prototype assignment (which MoCo does not have); CKA and Procrustes on the
unprojected features are logged as for the other methods.
"""
from jhssl import bootstrap  # noqa: F401

import numpy as np
import jittor as jt
from jittor import nn

from jhssl import dist
from models.heads import run_auxiliary

from .base import Method
from .selfdistill import build_aux_head_for, build_base_model


def l2_normalize(x):
    return x / jt.maximum(jt.sqrt((x * x).sum(dim=-1, keepdims=True)), 1e-12)


def info_nce(q, k, keys=None, offset=0, queue=None, temperature=0.2):
    """MoCo's contrastive loss of queries ``q`` (N, C) against their positive keys ``k`` (N, C).

    ``keys`` (M, C): the global batch's keys (in-batch negatives; ``k`` are its rows ``offset ..
    offset + N - 1``), or None for the positive alone; ``queue`` (K, C): extra negatives, or None.
    Rows are L2-normalised here. Returns ``2 tau * mean_i CE(logits_i / tau, positive_i)`` (the
    official scale, which makes the gradient independent of tau to first order).
    """
    q = l2_normalize(q)
    k = l2_normalize(k.detach())
    n = q.shape[0]
    if keys is not None:
        logits = nn.matmul_transpose(q, l2_normalize(keys.detach()))
        target = np.arange(n) + int(offset)
    else:
        logits = (q * k).sum(dim=-1, keepdims=True)
        target = np.zeros(n, dtype=np.int64)
    if queue is not None:
        logits = jt.concat([logits, nn.matmul_transpose(q, queue.detach())], dim=1)
    logits = logits / temperature
    onehot = np.zeros(tuple(logits.shape), dtype=np.float32)
    onehot[np.arange(n), target] = 1.0
    mx = logits.max(dim=1, keepdims=True).detach()
    lse = jt.log(jt.exp(logits - mx).sum(dim=1)) + mx.reshape((-1,))
    ce = lse - (logits * jt.array(onehot).stop_grad()).sum(dim=1)
    return ce.mean() * (2.0 * temperature)


class MoCoMLP(nn.Module):
    """The official ``_build_mlp``: ``num_layers`` bias-free Linear layers, BatchNorm + ReLU between
    them, a BatchNorm without affine after the last (keys ``mlp.<i>``)."""

    def __init__(self, num_layers, in_dim, hidden_dim, out_dim):
        super().__init__()
        layers = []
        for i in range(num_layers):
            d_in = in_dim if i == 0 else hidden_dim
            d_out = out_dim if i == num_layers - 1 else hidden_dim
            layers.append(nn.Linear(d_in, d_out, bias=False))
            if i < num_layers - 1:
                layers += [nn.BatchNorm1d(d_out), nn.ReLU()]
            else:
                layers.append(nn.BatchNorm1d(d_out, affine=False))
        self.mlp = nn.Sequential(*layers)

    def execute(self, x):
        return self.mlp(x)


class MoCoNetwork(nn.Module):
    """Base model, optional HSSL auxiliary head, a projector per branch and (online only) a predictor.

    State-dict keys: ``backbone.*``, ``aux_head.*``, ``projector.mlp.*``, ``aux_projector.mlp.*``,
    and on the online network ``predictor.mlp.*``, ``aux_predictor.mlp.*`` (the EMA pairs by name,
    so the momentum network simply has no predictor).
    """

    def __init__(self, backbone, aux_head, proj_hidden_dim, proj_dim, pred_hidden_dim, predictor):
        super().__init__()
        self.backbone = backbone
        self.aux_head = aux_head
        self.projector = MoCoMLP(3, backbone.num_features, proj_hidden_dim, proj_dim)
        self.has_predictor = bool(predictor)
        if predictor:
            self.predictor = MoCoMLP(2, proj_dim, pred_hidden_dim, proj_dim)
        if aux_head is not None:
            self.aux_projector = MoCoMLP(3, aux_head.out_dim, proj_hidden_dim, proj_dim)
            if predictor:
                self.aux_predictor = MoCoMLP(2, proj_dim, pred_hidden_dim, proj_dim)

    def features(self, x):
        """``{"base": (B, C) base feature, "head": (B, Ch) head feature}`` (head only with HSSL)."""
        out = self.backbone.forward_features(x)
        feats = {"base": out["cls"]}
        if self.aux_head is not None:
            feats["head"] = run_auxiliary(self.aux_head, out)["cls"]
        return feats

    def project(self, feat, which):
        """The projector (+ predictor on the online network) of branch ``which`` (base|head)."""
        z = (self.aux_projector if which == "head" else self.projector)(feat)
        if self.has_predictor:
            z = (self.aux_predictor if which == "head" else self.predictor)(z)
        return z

    def execute(self, x, want=("base", "head")):
        """One view (B, 3, H, W) -> ``{branch: (B, proj_dim)}`` for the requested branches. Each
        view is its own forward, so BatchNorm statistics are per view, as in the official code."""
        feats = self.features(x)
        return {w: self.project(feats[w], w) for w in want}


class MoCoLoss(nn.Module):
    """InfoNCE over the chosen negatives, plus the key queue (the method's only training state)."""

    def __init__(self, temperature, negatives, queue_size, dim):
        super().__init__()
        self.temperature = float(temperature)
        self.in_batch = "batch" in negatives
        self.use_queue = "queue" in negatives
        if self.use_queue:
            if queue_size <= 0:
                raise ValueError(f"mocov3.negatives={negatives} needs mocov3.queue_size > 0")
            self.queue = l2_normalize(jt.randn((int(queue_size), int(dim)))).stop_grad()

    def execute(self, queries, keys):
        """``queries``: {branch: [q of view 0, q of view 1]} (this rank's rows); ``keys``: [k of view
        0, k of view 1] (this rank's rows). Returns ``{"ctr_<branch>": ..., "loss": ...}`` and enqueues
        the keys (after the loss, so this step's negatives are the queue before it)."""
        gathered = [dist.all_gather_var(l2_normalize(k.detach())) for k in keys] if (
            self.in_batch or self.use_queue) else [None, None]
        offset = dist.rank() * keys[0].shape[0]
        queue = self.queue if self.use_queue else None
        parts, total = {}, 0.0
        for name, (q0, q1) in queries.items():
            # query of one view against the key of the other view, both ways (Eq. 11, symmetrised)
            term = 0.0
            for q, kv in ((q1, 0), (q0, 1)):
                term = term + info_nce(q, keys[kv], gathered[kv] if self.in_batch else None, offset, queue,
                                       self.temperature)
            parts["ctr_" + name] = term
            total = total + term
        parts["loss"] = total
        if self.use_queue:
            with jt.no_grad():
                size = self.queue.shape[0]
                new = jt.concat([gathered[1], gathered[0], self.queue], dim=0)[:size]
                self.queue.update(new.stop_grad())
        return parts


class MoCoV3(Method):
    """Online network + momentum network + :class:`MoCoLoss` (see the module docstring)."""

    name = "mocov3"

    def __init__(self, cfg, student, teacher, loss):
        super().__init__(cfg, student, teacher, loss)
        hssl = cfg.hssl is not None
        self.query_branches = ["base", "head"] if hssl else ["base"]
        self.key_branch = "head" if hssl else "base"  # Eq. 11: the momentum head's output is the key

    def compute_loss(self, crops, masks, epoch):
        if len(crops) != 2:
            raise ValueError(f"MoCo v3 takes 2 views per image, got {len(crops)}")
        # the momentum network is in train mode (Method.__init__, the trainer): batch statistics, as
        # the official model's
        with jt.no_grad():
            keys = [self.teacher(x, want=(self.key_branch,))[self.key_branch].detach() for x in crops]
        outs = [self.student(x, want=self.query_branches) for x in crops]
        queries = {b: [outs[0][b], outs[1][b]] for b in self.query_branches}
        return self.loss(queries, keys)

    def param_groups(self):
        """Official MoCo v3: AdamW's weight decay on every trained parameter (norms and biases too)."""
        names, params = [], []
        for n, p in self.student.named_parameters():
            if not p.is_stop_grad():
                names.append(n)
                params.append(p)
        return [{"params": params, "names": names, "regularized": True}]

    def discrepancy_batch(self, net, x, epoch):
        from jhssl.metrics import similarity_kl_rows
        feats = net.features(x)
        zb = (net.projector(feats["base"])).numpy()
        zh = (net.aux_projector(feats["head"])).numpy()
        d = similarity_kl_rows(zb, zh, self.loss.temperature)
        return d, feats["base"].numpy(), feats["head"].numpy()


def _network(cfg, teacher):
    mo = cfg.mocov3
    backbone = build_base_model(cfg, drop_path_rate=0.0 if teacher else None)
    if mo.freeze_patch_embed:
        frozen = [p for n, p in backbone.named_parameters() if n.startswith("patch_embed.")]
        if not frozen:
            raise ValueError(f"mocov3.freeze_patch_embed: model.arch={cfg.model.arch} has no patch embedding "
                             f"(patch_embed.*); set mocov3.freeze_patch_embed=false")
        for p in frozen:
            p.stop_grad()
    aux = build_aux_head_for(cfg, backbone, teacher)
    return MoCoNetwork(backbone, aux, mo.proj_hidden_dim, mo.proj_dim, mo.pred_hidden_dim, predictor=not teacher)


def build(cfg):
    mo = cfg.mocov3
    student, teacher = _network(cfg, teacher=False), _network(cfg, teacher=True)
    loss = MoCoLoss(mo.temperature, mo.negatives, mo.queue_size, mo.proj_dim)
    method = MoCoV3(cfg, student, teacher, loss)
    method.copy_student_to_teacher()
    return method
