"""One module per supported model family (registered in ``epd.models.FAMILIES``)."""
