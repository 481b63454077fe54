"""Speech recognisers as model families, chosen by name.

    from pqm_jax import models
    family = models.get("tiny.en")            # the Whisper family; models.get("conformer")
    family = models.of(config)                # by architecture config (WhisperConfig, ...)

Each family is a folder (`whisper/`, `conformer/`) holding its model, decoding, checkpoint
formats and a `family.py` that registers a `Family`; `common/` holds the parts they share.
Adding a family is one new folder plus its entry in `family.BUILTIN` (or a `register` call
from your own package).
"""

from pqm_jax.models.family import (  # noqa: F401  (the registry's public names)
    Family,
    ModelSpec,
    families,
    get,
    model_names,
    of,
    register,
    unregister,
)
