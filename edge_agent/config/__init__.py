"""The gateway's config: models (``model``) and file loading with layering (``load``)."""
