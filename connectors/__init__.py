"""Built-in connector plugins, one package per POS vendor (registered as entry points)."""
