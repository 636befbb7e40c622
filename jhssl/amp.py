"""Mixed precision: bf16/fp16 matrix products, everything that accumulates in fp32.

What replaces ``jt.flags.auto_mixed_precision_level = 5`` (which, set before the model was built,
made every ``jt.array`` fp16: fp16 parameters, AdamW moments and EMA teacher, no master weights,
no loss scaling; the teacher froze because ``(1 - m) * student`` falls under fp16 resolution
as m -> 1, and ``eps = 1e-8`` rounded to 0).

The design is torch.autocast's, applied to Jittor:

* **Parameters stay fp32** and are the master weights: the optimizer state (AdamW ``m``, ``v``)
  and the EMA teacher are fp32 Vars, updated in fp32.
* **Autocast** (:meth:`Precision.autocast`): while it is on, ``nn.Linear`` and ``nn.Conv``
  (``Conv2d``, depthwise included) cast their input, weight and bias to the compute dtype for the
  product; the gradient of a cast is cast back, so parameter gradients arrive in fp32. Jittor
  promotes mixed dtypes to the wider one, so a residual stream that starts fp32 stays fp32.
* **fp32 islands**: LayerNorm (``models.layers.fast_norm``) and the attention softmax
  (``models.layers.attention.softmax_last``) compute in fp32 from low-precision input, and the
  loss (``SelfDistillationLoss``) casts the networks' logits to fp32 first, so the softmaxes,
  cross-entropies and the centers are fp32 (:func:`to_fp32`).
* **bf16** (default where the GPU has it: compute capability >= 8.0, Ampere/Hopper) needs no loss
  scaling (fp32's exponent range). **fp16** (Volta/Turing, or ``amp_dtype=float16``) uses dynamic
  loss scaling (:class:`LossScaler`): the loss is multiplied by S before backward, gradients are
  divided by S before clipping, a step whose gradients hold inf/NaN is skipped and S halves;
  after ``growth_interval`` clean steps S doubles (torch.cuda.amp.GradScaler's rule).

* **CPU** (``amp: true`` on a CPU with native bf16, AVX512_BF16 or AMX): Jittor's own CPU kernels
  for bf16 Vars are slower than fp32, so nothing changes dtype. Instead ``nn.Linear`` products
  and the attention products round their operands to bf16 inside oneDNN's GEMM and accumulate
  in fp32 (:mod:`models.layers.linear`, :func:`models.perf.bf16_products`): the products run at
  about twice fp32's rate and every Var, LayerNorm and softmax stays fp32. Convolutions and the
  prototype layer stay fp32 (as on the GPU). ``amp_dtype: float16`` on a CPU is an error; a CPU
  without bf16 instructions trains in fp32 and says so.

``train`` builds a :class:`Precision` from ``cfg.amp`` / ``cfg.amp_dtype`` and the device; tests
build one directly.
"""
from jhssl import bootstrap  # noqa: F401

import contextlib
import warnings

import jittor as jt
from jittor import nn

from models import perf as model_perf
from models.layers import linear as model_linear

LOW = ("bfloat16", "float16")
# compute dtype while an autocast is on (graph-building time); cpu: bf16 products in fp32 Vars
_ACTIVE = {"dtype": None, "cpu": False}


# ----------------------------------------------------------------------------- casts
def compute_dtype():
    """The autocast dtype now in force, or None."""
    return _ACTIVE["dtype"]


def is_low(v) -> bool:
    return isinstance(v, jt.Var) and str(v.dtype) in LOW


def fp32(v):
    """``v`` as float32 when it is a bf16/fp16 Var (no op added otherwise)."""
    return v.float32() if is_low(v) else v


def to_fp32(*values):
    """:func:`fp32` through nested dicts/lists/tuples (None passes); one value in, one out."""
    def conv(x):
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(conv(v) for v in x)
        return fp32(x)
    out = tuple(conv(v) for v in values)
    return out[0] if len(out) == 1 else out


class _GradInOwnDtype(jt.Function):
    """Identity whose backward casts the incoming gradient to the output's own dtype.

    A low-precision layer output may reach fp32 consumers (GELU's erf and LayerNorm are computed
    in fp32): Jittor then hands the layer an fp32 gradient, and the product's backward would mix
    fp32 and bf16/fp16 operands (Jittor's CPU matmul rejects that; on the GPU it would run in
    fp32). Cast here, the backward products run in the compute dtype like the forward ones."""

    def execute(self, y):
        self.dtype = y.dtype
        return y.clone()

    def grad(self, g):
        return g if g is None or g.dtype == self.dtype else g.cast(self.dtype)


def _autocast_execute(original):
    """Wrap a layer's ``execute``: under autocast, run it on casts of input, weight and bias."""
    def execute(self, x, *args, **kw):
        dt = _ACTIVE["dtype"]
        if dt is None or not isinstance(x, jt.Var) or not x.dtype.is_float():
            return original(self, x, *args, **kw)
        if _ACTIVE["cpu"]:  # CPU: fp32 Vars, the product rounds its operands to bf16 in oneDNN
            if isinstance(self, nn.Linear) and not args and not kw:
                return model_linear.linear(x, self.weight, self.bias)
            return original(self, x, *args, **kw)
        saved = {}
        for name in ("weight", "bias"):
            v = self.__dict__.get(name)
            if isinstance(v, jt.Var) and str(v.dtype) != dt:
                saved[name] = v
                self.__dict__[name] = v.cast(dt)
        try:
            y = original(self, x if str(x.dtype) == dt else x.cast(dt), *args, **kw)
            return _GradInOwnDtype.apply(y) if isinstance(y, jt.Var) and str(y.dtype) == dt else y
        finally:
            self.__dict__.update(saved)
    execute._jhssl_autocast = True
    return execute


def _install():
    """Patch ``nn.Linear`` and ``nn.Conv`` once; outside an autocast the wrapper is a pass-through."""
    for cls in {nn.Linear, nn.Conv, nn.Conv2d}:
        if not getattr(cls.execute, "_jhssl_autocast", False):
            cls.execute = _autocast_execute(cls.execute)


@contextlib.contextmanager
def autocast(dtype, cpu=False):
    """Linear/conv products in ``dtype`` ('bfloat16' | 'float16'; None: no change) while on.

    ``cpu=True`` (bfloat16 only): the CPU mode of the module docstring, fp32 Vars with bf16
    linear and attention products inside oneDNN."""
    if dtype is None:
        yield
        return
    if dtype not in LOW:
        raise ValueError(f"autocast dtype must be one of {LOW}, got {dtype!r}")
    if cpu and dtype != "bfloat16":
        raise ValueError(f"the CPU autocast computes in bfloat16 only, got {dtype!r}")
    _install()
    previous = dict(_ACTIVE)
    _ACTIVE.update(dtype=dtype, cpu=bool(cpu))
    try:
        with model_perf.bf16_products(bool(cpu)):
            yield
    finally:
        _ACTIVE.update(previous)


# ----------------------------------------------------------------------------- loss scaling
class LossScaler:
    """Dynamic loss scale for fp16 (torch GradScaler's rule, host-side: one sync per step).

    ``scale``: multiply the loss by it before backward. ``update(found_inf)``: after each step,
    halve on inf/NaN gradients (the step is skipped), double after ``growth_interval`` clean steps.
    """

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 min_scale=1.0, max_scale=2.0 ** 24):
        if not (init_scale > 0 and growth_factor > 1 and 0 < backoff_factor < 1 and growth_interval >= 1):
            raise ValueError("LossScaler: need init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1, "
                             "growth_interval >= 1")
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.good_steps = 0
        self.skipped = 0

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            self.good_steps = 0
            self.skipped += 1
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale = min(self.scale * self.growth_factor, self.max_scale)
            self.good_steps = 0

    @staticmethod
    def found_inf(grads) -> bool:
        """True when any gradient holds inf or NaN (one lazy reduction, one host read):
        ``g * 0`` is 0 for finite entries and NaN otherwise."""
        total = None
        for g in grads:
            s = (g * 0.0).sum()
            total = s if total is None else total + s
        if total is None:
            return False
        return not bool(float(total.item()) == 0.0)

    def state_dict(self):
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def load_state_dict(self, state):
        self.scale = float(state["scale"])
        self.good_steps = int(state.get("good_steps", 0))
        self.skipped = int(state.get("skipped", 0))


# ----------------------------------------------------------------------------- policy
def gpu_has_bf16() -> bool:
    """Compute capability >= 8.0 (Ampere, Hopper...) on the GPU Jittor compiles for."""
    archs = getattr(jt.compiler, "cuda_archs", None) or []
    return bool(archs) and max(int(a) for a in archs) >= 80


def cpu_has_bf16() -> bool:
    """The CPU has native bf16 dot products (AVX512_BF16 or AMX-BF16), which oneDNN dispatches to."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_dtype(amp, amp_dtype="auto", on_cuda=True, bf16_ok=None):
    """The compute dtype for ``cfg.amp`` / ``cfg.amp_dtype`` on this device, or None (fp32).

    On the CPU (``on_cuda=False``) ``bf16_ok`` is the CPU's bf16 support (None: :func:`cpu_has_bf16`)."""
    if not amp:
        return None
    if not on_cuda:
        if amp_dtype not in ("auto", "bfloat16"):
            raise ValueError(f"amp_dtype={amp_dtype!r} on the CPU: CPU mixed precision is bfloat16 only "
                             f"(use amp_dtype auto or bfloat16, or amp false)")
        if not (cpu_has_bf16() if bf16_ok is None else bf16_ok):
            warnings.warn("amp: this CPU has no bf16 instructions (AVX512_BF16/AMX), training in fp32",
                          RuntimeWarning, stacklevel=2)
            return None
        return "bfloat16"
    if amp_dtype == "auto":
        return "bfloat16" if (gpu_has_bf16() if bf16_ok is None else bf16_ok) else "float16"
    if amp_dtype not in LOW:
        raise ValueError(f"amp_dtype must be auto, bfloat16 or float16, got {amp_dtype!r}")
    return amp_dtype


class Precision:
    """One run's precision policy: ``autocast()`` for the forward, ``scaler`` for fp16 (else None)."""

    def __init__(self, dtype=None, scaler=None, cpu=False):
        if dtype is not None and dtype not in LOW:
            raise ValueError(f"Precision dtype must be None or one of {LOW}, got {dtype!r}")
        if cpu and dtype not in (None, "bfloat16"):
            raise ValueError(f"CPU mixed precision is bfloat16 only, got {dtype!r}")
        self.dtype = dtype
        self.cpu = bool(cpu) and dtype is not None
        self.scaler = scaler if scaler is not None else (LossScaler() if dtype == "float16" else None)

    @classmethod
    def from_config(cls, cfg, on_cuda):
        return cls(resolve_dtype(cfg.amp, getattr(cfg, "amp_dtype", "auto"), on_cuda), cpu=not on_cuda)

    def autocast(self):
        return autocast(self.dtype, cpu=self.cpu)

    def attach(self, optimizer):
        """Give ``optimizer`` (jhssl.optim.AdamW) the loss scaler; returns the optimizer."""
        optimizer.loss_scaler = self.scaler
        return optimizer

    def describe(self) -> str:
        if self.dtype is None:
            return "fp32"
        if self.cpu:
            if not model_perf.fast_kernels_enabled():  # the bf16 products are a fast kernel
                return "fp32 (amp's bf16 products need the fast kernels: JHSSL_FAST_KERNELS=0 is set)"
            return "bf16 linear/attention products in oneDNN, fp32 elsewhere"
        return self.dtype + (" + dynamic loss scaling" if self.scaler is not None else "") + ", fp32 master weights"
