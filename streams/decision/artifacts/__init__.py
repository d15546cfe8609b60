"""Package data of the decision stage: the fitted cost tables (``cost_tables.json``, from ``surge cost fit``)."""
