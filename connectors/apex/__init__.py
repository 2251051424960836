"""The Apex POS connector (vendor-docs/apex-pos-api.txt). ``connectors.apex.sandbox``: the fake Apex server."""
