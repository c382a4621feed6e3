"""prs_jax: Progressive Reparameterization Scheduling in JAX/Flax."""

__version__ = "0.1.0"
