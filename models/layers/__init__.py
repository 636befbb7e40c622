"""Small reusable Jittor building blocks shared by the base models and the auxiliary heads."""
