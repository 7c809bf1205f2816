import jax

jax.config.update("jax_enable_x64", True)   # the suite's conftest does too; float64 references
