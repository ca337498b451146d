"""CJ/T 188 water, gas and heat meters on a shared serial bus or behind a serial device server."""
