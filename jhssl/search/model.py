"""The search's network and method: one base model, one branch per candidate head, Eq. 7's loss."""
from jhssl import bootstrap  # noqa: F401

import copy
from typing import Dict, List, Optional, Sequence

import jittor as jt
from jittor import nn

from jhssl.config import HEAD_ARCHS, ConfigError
from jhssl.methods.losses import SelfDistillationLoss
from jhssl.methods.network import backbone_passes, new_outputs
from jhssl.methods.registry import method_spec
from jhssl.methods.selfdistill import SelfDistillation, build_model


# ----------------------------------------------------------------------------- config
def check_search_config(cfg) -> List[str]:
    """The candidate heads (``hssl.heads`` of a search config), validated before any compute."""
    why_not = method_spec(cfg.method).search
    if why_not:
        raise ConfigError(f"run/search.py does not support method={cfg.method}: {why_not}")
    if cfg.hssl is None:
        raise ConfigError("the search needs an 'hssl' section: hssl.heads lists the candidate heads")
    heads = list(cfg.hssl.heads)
    if not heads:
        raise ConfigError(f"hssl.heads is empty: list the candidate heads (known: {', '.join(HEAD_ARCHS)})")
    unknown = [h for h in heads if h not in HEAD_ARCHS]
    if unknown:
        raise ConfigError(f"unknown head '{unknown[0]}' in hssl.heads; known heads: {', '.join(HEAD_ARCHS)}")
    dup = sorted({h for h in heads if heads.count(h) > 1})
    if dup:
        raise ConfigError(f"hssl.heads lists {', '.join(dup)} more than once; each candidate must be unique")
    if not cfg.hssl.image_level:
        raise ConfigError("the search ranks heads by the image-level discrepancy (Eq. 8) and trains with "
                          "Eq. 6: hssl.image_level must be true")
    return heads


def candidate_config(cfg, head: str):
    """The single-head HSSL config of one candidate (same everything, ``hssl.heads=[head]``)."""
    c = copy.deepcopy(cfg)
    c.hssl.heads = [head]
    return c


# ----------------------------------------------------------------------------- network
class SearchNetwork(nn.Module):
    """One base model and ``n`` candidate branches.

    ``branches[i]`` is a single-head :class:`jhssl.methods.SSLNetwork` built for candidate i
    (its auxiliary head, the base projection paired with it, the head's projection and
    prototypes) whose own backbone is dropped: every branch consumes the *shared* backbone's
    features. State-dict keys: ``backbone.*`` and ``branches.<i>.{head,last_layer*,aux_head,
    aux_proj,aux_last_layer*}.*``.
    """

    def __init__(self, backbone, branches: Sequence, names: Sequence[str]):
        super().__init__()
        self.backbone = backbone
        for b in branches:
            b.backbone = None  # shared: the branch only keeps its heads and projections
        self.branches = nn.ModuleList(list(branches))
        self.names = list(names)

    def execute(self, crops, masks=None, n_global=None, want=("base_cls", "base_patch", "head_cls", "head_patch"),
                patch_rows=None):
        """Like ``SSLNetwork.execute`` but returns ``{candidate name: {key: Var}}``.

        The backbone runs once per group of equal-size crops; every branch projects those
        features (and runs its auxiliary head on them).
        """
        want = set(want)
        acc = [new_outputs() for _ in self.branches]
        for is_global, out in backbone_passes(self.backbone, crops, masks, n_global):
            for br, ac in zip(self.branches, acc):
                br.collect(out, is_global, want, ac)
        return {name: br.finish(ac, want, patch_rows) for name, br, ac in zip(self.names, self.branches, acc)}


class _LossBank(nn.Module):
    """One :class:`SelfDistillationLoss` per candidate (own centers); keys ``losses.<i>.center*``."""

    def __init__(self, losses):
        super().__init__()
        self.losses = nn.ModuleList(list(losses))


class SearchMethod(SelfDistillation):
    """Student/teacher :class:`SearchNetwork` pair trained with Eq. 7 (mean of the per-head Eq. 6).

    Which outputs meet in candidate i's loss follows the single-head HSSL method exactly
    (``SelfDistillation``: CLS ``L(z1h, z2b) + L(z1h, z2h)``; patch terms per ``hssl.patch_level``),
    so a search with one candidate computes the same loss as an HSSL run with that head.
    """

    # jhssl.train's per-epoch base/head discrepancy log (Eq. 5, CKA, Procrustes) measures one head;
    # the search ranks its candidates with D_i (Eq. 8) after training instead
    per_epoch_discrepancy = False

    def __init__(self, cfg, student: SearchNetwork, teacher: SearchNetwork, losses: Sequence[SelfDistillationLoss]):
        self.bank = _LossBank(losses)
        super().__init__(cfg, student, teacher, self.bank, patch_terms=losses[0].use_patch)
        self.names = list(student.names)

    def loss_for(self, i: int) -> SelfDistillationLoss:
        return self.bank.losses[i]

    def compute_loss(self, crops, masks, epoch):
        t, s, patch_masks = self.forward_pair(crops, masks)
        parts: Dict[str, jt.Var] = {}
        total = 0.0
        for i, name in enumerate(self.names):
            out = self.loss_terms(self.loss_for(i), t[name], s[name], patch_masks, epoch)
            parts["loss_" + name] = out["loss"]
            total = total + out["loss"]
        parts["loss"] = total / len(self.names)  # Eq. 7
        return parts


def build_search(cfg, heads: Optional[Sequence[str]] = None) -> SearchMethod:
    """The search method for ``cfg`` with candidates ``heads`` (default: ``cfg.hssl.heads``).

    Each branch is built by the methods package from the candidate's single-head config
    (``build_model(candidate_config(cfg, head))``), so projections, prototypes and loss settings
    are those of a normal HSSL run with that head; the first candidate's backbone becomes the
    shared one (student and teacher), the others' are discarded.
    """
    heads = list(heads) if heads is not None else check_search_config(cfg)
    singles = [build_model(candidate_config(cfg, h)) for h in heads]
    student = SearchNetwork(singles[0].student.backbone, [m.student for m in singles], heads)
    teacher = SearchNetwork(singles[0].teacher.backbone, [m.teacher for m in singles], heads)
    method = SearchMethod(cfg, student, teacher, [m.loss for m in singles])
    method.copy_student_to_teacher()
    return method
