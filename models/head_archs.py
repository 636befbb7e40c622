"""The auxiliary-head architectures (``models.heads``), as names only.

A leaf without jittor, so that config parsing (``jhssl.config``) and tools can list the heads
without importing jittor; ``models.heads`` builds them.
"""
HEAD_ARCHS = ("convnext", "resnet", "resmlp", "poolformer", "vit", "swin")
